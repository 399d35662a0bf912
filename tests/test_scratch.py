"""The scratch pool (`ntkit.scratch`): reuse inside scopes, bounded idle memory, and kernels that
stay exact when every buffer of a call is a reused one (checked against the float64 reference)."""

from __future__ import annotations

import threading
import warnings

import pytest
import torch
from zoo import OUTPUTS, RTOL64, ZOO, D, rel_err

import ntkit
from ntkit import scratch
from ntkit.engine import cache
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


def test_scopes_reuse_and_bound_idle_memory(monkeypatch):
    monkeypatch.setattr(scratch, "MIN_BYTES", 1024)
    with scratch.scope():
        a = scratch.empty((64, 64), torch.float32, "cpu")
        b = scratch.empty((32, 128), torch.float32, "cpu")  # same size, distinct buffer
        small = scratch.empty((4,), torch.float32, "cpu")  # under MIN_BYTES: not pooled
        assert a.data_ptr() != b.data_ptr()
        ptrs = {a.data_ptr(), b.data_ptr()}
        with scratch.scope():  # nested: the outer scope owns the buffers
            c = scratch.empty((16, 16, 16), torch.float32, "cpu")
        ptrs.add(c.data_ptr())
        del small
    assert scratch.idle_bytes() == 3 * 4096 * 4
    with scratch.scope():
        d = scratch.empty((4096,), torch.float32, "cpu")
        assert d.data_ptr() in ptrs  # reused
        e = scratch.empty((4096,), torch.float64, "cpu")  # another dtype: fresh
        assert e.data_ptr() not in ptrs
    # Idle memory is what the last scope used: one float32 and one float64 buffer.
    assert scratch.idle_bytes() == 4096 * 4 + 4096 * 8
    cache.clear()
    assert scratch.idle_bytes() == 0


def test_idle_memory_is_capped(monkeypatch):
    monkeypatch.setattr(scratch, "MIN_BYTES", 1024)
    monkeypatch.setattr(scratch, "MAX_IDLE_BYTES", 3 * 4096 * 4)
    with scratch.scope():
        for _ in range(5):
            scratch.empty((4096,), torch.float32, "cpu")
    assert scratch.idle_bytes() == 3 * 4096 * 4


def test_threads_never_share_a_buffer(monkeypatch):
    monkeypatch.setattr(scratch, "MIN_BYTES", 1024)
    seen: list[set[int]] = []
    barrier = threading.Barrier(4)

    def work():
        with scratch.scope():
            mine = {scratch.empty((4096,), torch.float32, "cpu").data_ptr() for _ in range(3)}
            barrier.wait()  # all four scopes open at once
            seen.append(mine)

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


# ----------------------------------------------------------------------------- malloc thresholds
_PROBE = ("import torch, ntkit; from ntkit import _malloc; "
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
