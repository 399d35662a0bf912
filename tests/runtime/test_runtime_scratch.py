"""The scratch pool (`ntkit._runtime.scratch`): reuse inside scopes, bounded idle memory, and kernels that
stay exact when every buffer of a call is a reused one (checked against the float64 reference)."""

from __future__ import annotations

import threading
import warnings

import pytest
import torch
from zoo import OUTPUTS, RTOL64, ZOO, D, rel_err

import ntkit
from ntkit._runtime import scratch
from ntkit.engine import cache
from ntkit.engine.call import prepare
from ntkit.reference import ntk_reference
from ntkit.rules import conv as conv_rules


@pytest.fixture(autouse=True)
def _fresh_pool():
    scratch.release()
    yield
    scratch.release()


def test_outside_a_scope_buffers_are_fresh():
    a = scratch.empty((1 << 21,), torch.float32, "cpu")
    del a
    assert scratch.idle_bytes() == 0


def test_scopes_reuse_freed_buffers_and_never_live_ones(monkeypatch):
    monkeypatch.setattr(scratch, "MIN_BYTES", 1024)
    with scratch.scope():
        a = scratch.empty((64, 64), torch.float32, "cpu")
        b = scratch.empty((32, 128), torch.float32, "cpu")  # same size, a is alive: distinct
        assert a.data_ptr() != b.data_ptr()
        small = scratch.empty((4,), torch.float32, "cpu")  # under MIN_BYTES: not pooled
        pa, pb = a.data_ptr(), b.data_ptr()
        del a
        c = scratch.empty((4096,), torch.float32, "cpu")  # a's buffer, free again
        assert c.data_ptr() == pa
        view = b.t()  # b's buffer stays in use through a view of it
        del b
        d = scratch.empty((4096,), torch.float32, "cpu")
        assert d.data_ptr() not in (pa, pb)
        with scratch.scope():  # nested scopes are the same scope
            e = scratch.empty((16, 16, 16), torch.float32, "cpu")
        assert e.data_ptr() not in (pa, pb, d.data_ptr())
        del small
    assert scratch.pooled_bytes() == 4 * 4096 * 4
    escaped = c  # outlives the scope: never handed out while it lives
    del d, e
    assert scratch.idle_bytes() == 2 * 4096 * 4  # c and view still use theirs
    with scratch.scope():
        got = {scratch.empty((4096,), torch.float32, "cpu").data_ptr() for _ in range(2)}
        assert escaped.data_ptr() not in got and view.data_ptr() not in got
    cache.clear()
    assert scratch.pooled_bytes() == 0


def test_freed_buffers_do_not_accumulate(monkeypatch):
    """Allocate-and-drop in a loop (a call with many block pairs) holds one buffer, not one per
    iteration."""
    monkeypatch.setattr(scratch, "MIN_BYTES", 1024)
    with scratch.scope():
        for _ in range(50):
            t = scratch.empty((4096,), torch.float32, "cpu")
            t.fill_(1.0)
            del t
    assert scratch.pooled_bytes() == 4096 * 4


def test_idle_memory_is_capped(monkeypatch):
    monkeypatch.setattr(scratch, "MIN_BYTES", 1024)
    monkeypatch.setattr(scratch, "MAX_IDLE_BYTES", 3 * 4096 * 4)
    with scratch.scope():
        live = [scratch.empty((4096,), torch.float32, "cpu") for _ in range(5)]
        del live
    assert scratch.idle_bytes() == scratch.pooled_bytes() == 3 * 4096 * 4


def test_threads_never_share_a_buffer(monkeypatch):
    monkeypatch.setattr(scratch, "MIN_BYTES", 1024)
    seen: list[set[int]] = []
    barrier = threading.Barrier(4)

    def work():
        with scratch.scope():
            mine = [scratch.empty((4096,), torch.float32, "cpu") for _ in range(3)]  # all alive
            barrier.wait()  # all four threads hold theirs at once
            seen.append({t.data_ptr() for t in mine})
            barrier.wait()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [p for s in seen for p in s]
    assert len(flat) == len(set(flat)) == 12


@pytest.mark.parametrize("grouped", [True, False], ids=["grouped", "per-sample"])
@pytest.mark.parametrize("output", OUTPUTS)
def test_structured_exact_when_every_buffer_is_reused(output, grouped, monkeypatch):
    """Pool every buffer and force ConvFactor (both of its paths): consecutive calls on different
    inputs (and different block sizes) must each match their own reference, so no call reads
    what an earlier call left in a reused buffer."""
    monkeypatch.setattr(scratch, "MIN_BYTES", 0)
    monkeypatch.setattr(conv_rules, "CONV_BACKWARD_MIN_IN", 0)
    monkeypatch.setattr(conv_rules, "GROUPED_MAX_ROWS", 10**9 if grouped else 0)
    case = next(c for c in ZOO if c.name == "convzoo")
    model = case.model()
    for seed, n1, n2 in ((1, 5, 3), (2, 5, 3), (3, 4, 6)):
        g = torch.Generator().manual_seed(seed)
        x1 = torch.randn(n1, *case.input_shape, generator=g, dtype=D)
        x2 = torch.randn(n2, *case.input_shape, generator=g, dtype=D)
        for y in (None, x2):
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a fallback would hide the rules behind autograd
                k = ntkit.ntk(model, x1, y, output=output, method="structured", batch_size=2)
            assert rel_err(k, ntk_reference(model, x1, y, output)) < RTOL64
        if output not in ("logit:-1", "pntk"):  # several outputs: sample-major cotangent buffers
            assert scratch.idle_bytes() > 0


def test_pool_does_not_grow_with_the_number_of_block_pairs(monkeypatch):
    """Under a budget that forbids caching sides, a call with more block pairs holds no more
    pooled memory (a scoped pool that kept every buffer until the call ended grew with them:
    16 GB for a 2,000-input CNN kernel under --memory 1GB)."""
    monkeypatch.setattr(scratch, "MIN_BYTES", 0)
    monkeypatch.setattr(conv_rules, "CONV_BACKWARD_MIN_IN", 0)
    monkeypatch.setattr(conv_rules, "GROUPED_MAX_ROWS", 0)
    case = next(c for c in ZOO if c.name == "convzoo")
    model = case.model()
    held = []
    for n in (8, 12, 24):  # (at 4 inputs some scratch is not needed at all: the pool is smaller)
        scratch.release()
        g = torch.Generator().manual_seed(n)
        x1 = torch.randn(n, *case.input_shape, generator=g, dtype=D)
        x2 = torch.randn(n, *case.input_shape, generator=g, dtype=D)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            k = prepare(model, x1, x2, "full", None, 2, None, "300KB").run("structured")  # engine planner: tiny budget
        assert rel_err(k, ntk_reference(model, x1, x2, "full")) < RTOL64
        held.append(scratch.pooled_bytes())
    assert held[0] > 0 and held[0] == held[1] == held[2]


# ----------------------------------------------------------------------------- malloc thresholds
_PROBE = ("import torch, ntkit; from ntkit._runtime import malloc as _malloc; "
          "ntkit.ntk(torch.nn.Linear(3, 2), torch.randn(4, 3)); print(_malloc._state.get('tuned'))")


def _probe(**env: str) -> str:
    import os
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items()
             if k not in ("NTKIT_MALLOC_TUNING", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")}
    out = subprocess.run([sys.executable, "-c", _PROBE], env={**clean, **env}, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def _glibc() -> bool:
    import ctypes
    import sys

    return sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "gnu_get_libc_version")


@pytest.mark.skipif(not _glibc(), reason="glibc only")
def test_malloc_thresholds_set_on_first_cpu_kernel_unless_the_user_chose():
    assert _probe() == "True"
    assert _probe(NTKIT_MALLOC_TUNING="0") == "False"
    assert _probe(MALLOC_TRIM_THRESHOLD_="1048576") == "False"  # the user's own settings stand
    assert _probe(GLIBC_TUNABLES="glibc.malloc.mmap_threshold=65536") == "False"
