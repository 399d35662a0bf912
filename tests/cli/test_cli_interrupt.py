"""Ctrl-C on `ntkit compute`, through the command line in a subprocess as a user meets it
(issue 18, items 1 (Ctrl-C), 3 and 5): acknowledged at once, the final message true (.npy:
nothing written; a store: tiles kept and resumable, or complete when the last tile finished
anyway), exit status 130 (0 when complete), and a resumed store bit-identical to one
uninterrupted run. Also: a rerun of a complete store and a refused resume say what happened.

The plan (--explain) is printed before any work, so it is the marker to interrupt after."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from cli_run import cli_argv, cli_env, run_cli

STORE_ARGS = ["digits[:120]", "cnn", "--output", "full", "--method", "jacobian", "--features", "recompute"]


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    # SIGINT as in a terminal: Python's default handler even if the test runner ignores it
    return subprocess.Popen(cli_argv(args), cwd=cwd, env=cli_env({"PYTHONUNBUFFERED": "1"}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_line(proc: subprocess.Popen, prefix: str, timeout: float = 90) -> list[str]:
    """stdout lines up to the one starting with `prefix` (the plan), read as they come."""
    seen = []
    t = time.time()
    while time.time() - t < timeout:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith(prefix):
            return seen
    proc.kill()
    raise AssertionError(f"no {prefix!r} line before the work ended: {seen} {proc.communicate()}")


def _finish(proc: subprocess.Popen, timeout: float = 90) -> tuple[str, str]:
    out, err = proc.communicate(timeout=timeout)
    return "".join([out]), err


def _store_bits(path: Path) -> dict[str, str]:
    return {f.stem: json.loads(f.read_text())["sha256"] for f in (path / "tiles").glob("*.json")}


def test_npy_first_ctrl_c_is_acknowledged_and_nothing_is_written(tmp_path):
    proc = _start(["compute", "digits[:300]", "cnn", "-o", "K.npy", "--output", "full", "--method", "jacobian",
                   "--batch-size", "30", "--explain"], tmp_path)
    _wait_for_line(proc, "  jacobian")  # the plan's estimates: printed before the kernel is computed
    time.sleep(1.0)  # into the computation (steps of 30 inputs: a fraction of a second each)
    proc.send_signal(signal.SIGINT)
    out, err = _finish(proc)
    assert proc.returncode == 130, (out, err)
    # "after the current step" (or, on a machine slow to get there, "before the kernel computation starts")
    assert "interrupt: stopping " in err and "Ctrl-C again to stop now" in err, err
    assert "nothing is written" in err, err
    assert "interrupted: nothing was written" in err and "Traceback" not in err, err
    assert err.index("interrupt: stopping") < err.index("interrupted: nothing")
    assert "wrote" not in out
    assert sorted(os.listdir(tmp_path)) == [], os.listdir(tmp_path)  # no K.npy, K.json, nor temporaries


def test_store_interrupt_keeps_tiles_then_resumes_to_the_same_bits(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    args = ["compute", *STORE_ARGS, "-o", "K.zarr", "--tile", "30", "--explain"]
    reference = _start(args, tmp_path / "b")  # one uninterrupted run, at the same time
    proc = _start(args, tmp_path / "a")
    lines = _wait_for_line(proc, "Jacobian rows:")  # the plan, before any tile (was: after the run)
    assert any(ln.startswith("plan: tiles 30 x 30 (10 to compute)") for ln in lines), lines
    assert "auto:" not in lines[-1] and "asked for" in lines[-1], lines  # --features given
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = _finish(proc)
    store = tmp_path / "a" / "K.zarr"
    done = len(_store_bits(store))
    assert proc.returncode == 130, (out, err)
    assert "interrupt: stopping after the current tile (" in err and "finished tiles are kept" in err, err
    assert "Ctrl-C again to stop now (this tile is lost)" in err, err
    assert f"interrupted: {done}/10 tiles done in K.zarr, run the same command again to resume" in err, err
    assert 0 < done < 10 and "Traceback" not in err

    resumed = run_cli(args, cwd=tmp_path / "a")
    ref_out, ref_err = _finish(reference)
    assert resumed.returncode == 0 and reference.returncode == 0, (resumed, ref_err)
    assert f"resuming K.zarr: {done}/10 tiles already done" in resumed.stdout, resumed.stdout
    assert resumed.stdout.index("plan: tiles") < resumed.stdout.index("resuming")
    assert _store_bits(store) == _store_bits(tmp_path / "b" / "K.zarr")  # same bits, tile by tile
    import zarr

    a = zarr.open(str(store), mode="r")[...]
    b = zarr.open(str(tmp_path / "b" / "K.zarr"), mode="r")[...]
    assert np.array_equal(a, b)



def test_ctrl_c_in_the_last_tile_that_finishes_says_complete(tmp_path):
    """One tile: the interrupt lands in it, the tile finishes, so the store is complete: said so,
    exit status 0 (it used to say 'interrupted ... 1/1 tiles done' and exit 130)."""
    proc = _start(["compute", "digits[:150]", "cnn", "-o", "K.zarr", "--output", "full", "--method", "jacobian",
                   "--features", "recompute", "--explain"], tmp_path)
    _wait_for_line(proc, "Jacobian rows:")
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = _finish(proc)
    assert "interrupt: stopping after the current tile" in err, err
    assert proc.returncode == 0, (out, err)
    assert "K.zarr is complete (1 tiles): Ctrl-C came during its last tile, which was finished" in err, err
    assert "interrupted" not in err and "wrote K.zarr" in out
    info = run_cli(["info", "K.zarr"], cwd=tmp_path)
    assert "progress: 1/1 tiles (100.0%)" in info.stdout


def test_second_ctrl_c_stops_at_once(tmp_path):
    """Two Ctrl-C in a row: the second does not wait for the tile; the store keeps what it had."""
    proc = _start(["compute", "digits[:150]", "cnn", "-o", "K.zarr", "--output", "full", "--method", "jacobian",
                   "--features", "recompute", "--explain", "-q"], tmp_path)
    _wait_for_line(proc, "Jacobian rows:")
    time.sleep(0.3)  # inside the tile
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = _finish(proc)
    assert proc.returncode == 130, (out, err)
    assert "interrupt: stopping after the current tile" in err  # acknowledged even with --quiet
    # 0/1: the tile did not finish (the first Ctrl-C alone lets it finish, see above)
    assert "interrupted: 0/1 tiles done in K.zarr, run the same command again to resume" in err, err
    assert "Traceback" not in err


def test_rerun_of_a_complete_store_and_a_refused_resume_say_what_happened(tmp_path, capsys):
    """A rerun of a complete store said 'wrote ... 1.20 s this run'; a refused resume first said
    'resuming K.zarr: 1/1 tiles already done'. (In-process: the messages, not the process.)"""
    from ntkit.cli import main

    args = ["compute", "digits[:24]", "mlp:depth=1,width=8", "-o", str(tmp_path / "K.zarr"), "--output", "full"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 0
    o = capsys.readouterr()
    assert o.out.strip() == f"{tmp_path / 'K.zarr'} is already complete (1 tiles); nothing computed", o
    assert main([*args[:-2], "--output", "trace"]) == 2
    o = capsys.readouterr()
    assert "cannot resume" in o.err and "resuming" not in o.out + o.err, o


def _wait(predicate, seconds=5.0):
    import time

    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def test_first_ctrl_c_is_acknowledged_while_the_main_thread_is_busy():
    """Python runs signal handlers only between bytecodes; the watcher thread reads the signal from
    the wakeup fd (written by the C-level handler) and says so at once. Here the byte is written
    by hand, so the Python-level handler never runs: only the watcher can have answered."""
    import os
    import signal as sig

    from ntkit.engine.progress import Interrupt

    said = []
    with Interrupt(on_first=lambda: said.append("first")) as stop:
        assert stop._pipe is not None
        os.write(stop._pipe[1], bytes([sig.SIGINT]))
        assert _wait(lambda: said == ["first"]), said
        assert stop.requested
    assert sig.getsignal(sig.SIGINT) is not stop._handler
    assert sig.set_wakeup_fd(-1) == -1  # restored: no wakeup fd left behind


def test_second_ctrl_c_in_a_long_operation_ends_the_process_with_the_last_word(monkeypatch):
    import os
    import signal as sig

    from ntkit.engine.progress import Interrupt

    said, exits = [], []
    monkeypatch.setattr(os, "_exit", lambda code: exits.append(code))
    with Interrupt(on_first=lambda: said.append("first"), on_stuck=lambda: said.append("stuck"), grace=0.2) as stop:
        os.write(stop._pipe[1], bytes([sig.SIGINT, sig.SIGINT]))
        assert _wait(lambda: exits == [130]), (said, exits)
    assert said == ["first", "stuck"]


def test_a_library_interrupt_never_ends_the_process(monkeypatch):
    """Without on_stuck (ntkit.compute's own stop flag) a second Ctrl-C only raises KeyboardInterrupt."""
    import os
    import signal as sig
    import time

    from ntkit.engine.progress import Interrupt

    exits = []
    monkeypatch.setattr(os, "_exit", lambda code: exits.append(code))
    with Interrupt(grace=0.05) as stop:
        os.write(stop._pipe[1], bytes([sig.SIGINT, sig.SIGINT]))
        assert _wait(lambda: stop.signals == 2)
        time.sleep(0.2)
    assert exits == []
