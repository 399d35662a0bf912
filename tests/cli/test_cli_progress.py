"""Progress from the first second (issue 18, items 3-4): the engine reports steps inside one
block, `ntkit.compute` inside one tile, the CLI's bar keeps its times uncut at 80 columns, a
store's --explain and the features record say what was decided and why. In-process (callbacks,
rendering), not timing."""

from __future__ import annotations

import io
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


def test_compute_reports_inside_a_tile_and_the_store_before_the_first(tmp_path):
    """A one-tile store used to report 0 entries then all of them: `0% ... 0:00:00` throughout.
    Now entries move with the engine's steps inside the tile, and the first call carries the
    checked store (so the CLI can print the plan before any work)."""
    model, x = _mlp(), torch.randn(40, 6, dtype=D)
    calls = []

    def cb(done, total, tiles=None, detail="", current=None, store=None):
        calls.append((done, total, tiles, detail, current, None if store is None else store.progress))

    ks = ntkit.compute(model, x, store=tmp_path / "K.zarr", output="full", method="jacobian", progress=cb)
    total = 40 * 40
    assert calls[0][:3] == (0, total, (0, 1)) and calls[0][5] == (0, 1)
    inside = [c for c in calls if c[4] is not None]
    assert inside and all(0 <= c[0] < total and c[2] == (0, 1) for c in inside)
    assert any(c[0] > 0 for c in inside) and any("rows 40/40" in c[3] for c in inside)
    assert calls[-1][:2] == (total, total) and calls[-1][2] == (1, 1) and ks.complete
    # the in-memory path too; and a plain callback keeps its two arguments
    plain = []
    ntkit.compute(model, x, output="full", method="jacobian", progress=lambda d, t: plain.append((d, t)))
    assert plain[0] == (0, total) and plain[-1] == (total, total) and len(plain) > 2


def test_features_record_says_auto_decided(tmp_path):
    """The store's features record said "asked for" when the default auto chose."""
    model, x = _mlp(), torch.randn(20, 6, dtype=D)
    ks = ntkit.compute(model, x, store=tmp_path / "a.zarr", method="structured")
    reason = ks.metadata["plan"]["features"]["reason"]
    assert reason.startswith("auto: ") and "structured" in reason, reason
    ks = ntkit.compute(model, x, store=tmp_path / "b.zarr", method="jacobian", features="recompute")
    assert ks.metadata["plan"]["features"]["reason"] == "asked for"


def _render(progress, width: int = 80) -> str:
    from rich.console import Console

    console = Console(width=width, file=io.StringIO(), record=True, color_system=None)
    console.print(progress.get_renderable())
    return console.export_text()


def test_bar_keeps_times_uncut_at_80_columns_and_shows_the_steps():
    """At 80 columns the elapsed time was cut to '0:00:…'. The bar is two lines: what (data,
    tile, rows, blocks) above, the bar with percent, rate, elapsed and ETA below."""
    from ntkit.cli._ui import Bar as _Bar

    bar = _Bar("eNTK cifar10[train:0:50000] x cifar10[test:0:10000] [structured]", delay=0.0,
               entries=50000 * 10000)
    try:
        bar.t0 -= 3725  # an hour in: 1:02:05
        bar(3, 8, detail="rows 1797/1797 · blocks 3/8")
        time.sleep(0.01)
        bar(4, 8, detail="rows 1797/1797 · blocks 4/8")
        text = _render(bar.progress)
    finally:
        bar.close()
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    assert all(len(ln) <= 80 for ln in lines), text
    assert "1:02:0" in text and "…" not in lines[1], text  # elapsed whole
    assert "ETA" in lines[1] and "50%" in lines[1] and "entries/s" in lines[1], text
    assert "rows 1797/1797 · blocks 4/8" in lines[0], text


def test_bar_appears_after_two_seconds_without_any_step(monkeypatch):
    """A step longer than the delay (one big block) no longer hides the bar: it appears on a timer."""
    from ntkit.cli._ui import Bar as _Bar

    bar = _Bar("eNTK digits x same [jacobian]", delay=0.05)
    try:
        bar(0, 5, detail="rows 0/1797 · blocks 0/8")
        assert bar.progress is None
        time.sleep(0.5)  # no further call: the timer shows it
        assert bar.progress is not None
        assert "0/1797" in _render(bar.progress)
    finally:
        bar.close()
    quiet = _Bar("x", delay=0.0, enabled=False)
    quiet(0, 5)
    quiet(1, 5)
    time.sleep(0.05)
    assert quiet.progress is None
    quiet.close()


def test_store_bar_counts_tiles_and_estimates_the_tile_left():
    from ntkit.cli.compute_cmd import _TileBar

    bar = _TileBar("eNTK digits x same", enabled=False)
    bar(0, 100, tiles=(0, 2))
    assert bar.tile_left() is None
    bar.tile_t0 -= 4.0  # 4 s into the first tile, a quarter of its steps done
    bar(10, 100, tiles=(0, 2), detail="rows 50/50 · blocks 1/4", current=(1, 4))
    left = bar.tile_left()
    assert 11.0 <= left <= 13.0, left
    assert bar.what.startswith("tile 1/2") and "blocks 1/4" in bar.what


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


def test_main_says_an_interrupt_that_typer_swallowed(monkeypatch, capsys, tmp_path):
    """typer (its vendored click) turns KeyboardInterrupt into a silent exit 130: main says it."""
    import os
    import signal

    import ntkit.data
    from ntkit.cli import main

    def ctrl_c(*a, **k):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)

    monkeypatch.setattr(ntkit.data, "resolve_kernel_data", ctrl_c)
    code = main(["compute", "digits[:8]", "mlp:depth=1,width=8", "-o", str(tmp_path / "K.npy")])
    assert code == 130
    assert "interrupted: nothing was written" in capsys.readouterr().err
    assert not (tmp_path / "K.npy").exists()
