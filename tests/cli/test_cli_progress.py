"""Progress on the command line (issue 18, items 3-4): the bar keeps its times uncut at 80
columns, appears after two seconds without a step, counts a store's tiles; `main` says an
interrupt that typer swallowed. In-process (rendering), not timing."""

from __future__ import annotations

import io
import time



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
