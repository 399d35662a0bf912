"""Progress from the first second (issue 18, item 3): the engine reports steps inside one block,
and the two-stage Ctrl-C restores the handler (ntkit.ntk installs none). In-process (callbacks),
not timing."""

from __future__ import annotations

import time

import pytest
import torch

import ntkit


D = torch.float64


def _mlp(n_out: int = 10) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, n_out)).to(D)


def _cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 6 * 6, 10)).to(D)


@pytest.mark.parametrize("method", ["jacobian", "structured"])
def test_one_block_kernel_reports_steps_inside_the_block(method):
    """A kernel of ONE block (no batch_size, small inputs) used to report 0/1 then 1/1: a bar could
    not move for the whole computation. Now Jacobian rows / per-sample factors and the diagonal
    block's sub-blocks are steps, with counts in `detail`."""
    model = _cnn() if method == "structured" else _mlp()
    x = torch.randn(40, 1, 6, 6, dtype=D) if method == "structured" else torch.randn(40, 6, dtype=D)
    calls = []
    k = ntkit.ntk(model, x, method=method, output="full",
                  progress=lambda d, t, detail="": calls.append((d, t, detail)))
    total = calls[0][1]
    assert total >= 3, calls
    assert [d for d, _, _ in calls] == list(range(total + 1))  # every step once, in order
    assert calls[-1][2] == "rows 40/40 · blocks 4/4", calls[-1]  # 40·O=400 matmul rows: 4 sub-blocks
    assert any("rows 40/40 · blocks 0/4" == c[2] for c in calls)  # the rows phase reported on its own
    ref = ntkit.ntk(model, x, method="jacobian", output="full", batch_size=40)
    assert torch.allclose(k, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fits", [True, False])
@pytest.mark.parametrize("symmetric", [True, False])
def test_progress_without_detail_keyword_and_uncached_structured_sides(monkeypatch, fits, symmetric):
    """Plain `callback(done, total)` still works, and totals stay exact when structured
    derivatives' sides do not fit their cache (the total is corrected once that is known)."""
    from ntkit.engine import structured

    if not fits:
        monkeypatch.setattr(structured.Side, "nbytes", lambda self, *a: 2**62)
    model, x = _cnn(), torch.randn(12, 1, 6, 6, dtype=D)
    x2 = None if symmetric else torch.randn(9, 1, 6, 6, dtype=D)
    calls = []
    k = ntkit.ntk(model, x, x2, method="structured", output="trace", batch_size=4,
                  progress=lambda d, t: calls.append((d, t)))
    assert calls[-1][0] == calls[-1][1] and [d for d, _ in calls] == list(range(calls[-1][1] + 1)), calls
    assert calls[-1][1] > (6 if symmetric else 9), calls  # steps inside the block pairs, not one per pair
    assert torch.allclose(k, ntkit.ntk(model, x, x2, method="jacobian", output="trace"), rtol=1e-10)


def test_interrupt_two_stages_and_restores_the_handler():
    """First SIGINT: a flag and a message, no exception; second: KeyboardInterrupt; afterwards
    the previous handler is back (library code leaves nothing installed)."""
    import os
    import signal

    from ntkit.engine.progress import Interrupt

    before = signal.getsignal(signal.SIGINT)
    said = []
    with pytest.raises(KeyboardInterrupt):
        with Interrupt(on_first=lambda: said.append(1)) as stop:
            assert Interrupt.active() is stop
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            assert stop.requested and said == [1]
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
    assert signal.getsignal(signal.SIGINT) is before and Interrupt.active() is None
    # and ntkit.ntk itself installs nothing: Ctrl-C is a KeyboardInterrupt as usual
    model, x = _mlp(), torch.randn(8, 6, dtype=D)

    def ctrl_c(done, total):
        assert signal.getsignal(signal.SIGINT) is before
        if done == 1:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)

    with pytest.raises(KeyboardInterrupt):
        ntkit.ntk(model, x, output="full", batch_size=2, method="jacobian", progress=ctrl_c)
