"""Issue 13, item 6: one writer per kernel store. A second compute (resume or --overwrite) while
one runs is refused naming the holder; a killed holder releases the lock; the loser of two
simultaneous starts is told who is writing, not to pass --overwrite."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import ntkit
from ntkit.cli import main
from ntkit.store import KernelStore
from helpers import job

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}


def _hold_lock(path: Path) -> subprocess.Popen:
    """A process that holds the store's lock (as a running compute does) until killed."""
    code = ("import sys, time\nfrom ntkit.store.lock import store_lock\n"
            "with store_lock(sys.argv[1], command='ntkit compute digits mlp -o K.zarr'):\n"
            "    print('held', flush=True)\n    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True,
                            env=_env(), cwd=ROOT)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _locked_error():
    from ntkit.store import StoreLockedError

    return StoreLockedError


def test_a_second_writer_is_refused_naming_the_holder_until_it_dies(tmp_path):
    path = tmp_path / "K.zarr"
    proc = subprocess.Popen([sys.executable, "-m", "tests.helpers.job", str(path), "--sleep", "0.05"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    try:
        deadline = time.time() + 60
        while not ((path / "tiles").is_dir() and any((path / "tiles").glob("*.json"))):
            assert proc.poll() is None and time.time() < deadline, "the job did not start writing"
            time.sleep(0.01)
        model, x = job.build()
        for overwrite in (True, False):  # neither replacing nor resuming a store being written
            with pytest.raises(_locked_error(), match=rf"pid {proc.pid} on this machine.*kill {proc.pid}"):
                ntkit.compute(model, x, store=path, output="trace", tile=8, overwrite=overwrite)
        assert (path / "zarr.json").exists() and KernelStore(path).metadata["output"] == "full"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # the kernel released the dead holder's lock: the same job resumes and finishes
    ks = job.run(str(path))
    assert ks.complete and ks.verify().ok


def test_cli_overwrite_of_a_store_being_written_is_refused(tmp_path, capsys):
    path = tmp_path / "K.zarr"
    holder = _hold_lock(path)
    try:
        rc = main(["compute", "digits[train:0:10]", "mlp:depth=1,width=8", "-o", str(path), "--overwrite",
                   "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2 and f"pid {holder.pid}" in err and "ntkit compute digits mlp" in err and "wait" in err
        assert not path.exists()
    finally:
        holder.kill()
        holder.wait()
    assert main(["compute", "digits[train:0:10]", "mlp:depth=1,width=8", "-o", str(path), "--quiet"]) == 0


def test_the_loser_of_two_simultaneous_starts_is_told_who_is_writing(tmp_path, capsys):
    """The winner has created the store's directory but not its metadata yet."""
    path = tmp_path / "K.zarr"
    holder = _hold_lock(path)
    try:
        path.mkdir()
        rc = main(["compute", "digits[train:0:10]", "mlp:depth=1,width=8", "-o", str(path), "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2 and "being written by" in err and f"pid {holder.pid}" in err
        assert "pass --overwrite" not in err
    finally:
        holder.kill()
        holder.wait()


def test_another_thread_of_the_same_process_is_refused(tmp_path):
    from ntkit.store.lock import store_lock

    path = tmp_path / "K.zarr"
    held, release = threading.Event(), threading.Event()

    def hold():
        with store_lock(path):
            held.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    try:
        held.wait(30)
        model, x = job.build()
        with pytest.raises(_locked_error(), match="another thread"):
            ntkit.compute(model, x[:8], store=path, output="trace", tile=4)
    finally:
        release.set()
        t.join()
    model, x = job.build()
    assert ntkit.compute(model, x[:8], store=path, output="trace", tile=4).complete


def test_without_flock_the_store_is_written_with_a_warning(tmp_path, monkeypatch):
    import fcntl

    from ntkit.store import StoreLockWarning

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    model, x = job.build()
    with pytest.warns(StoreLockWarning, match="make sure no other run writes"):
        ks = ntkit.compute(model, x[:8], store=tmp_path / "K.zarr", output="trace", tile=4)
    assert ks.complete


def test_readers_need_no_lock_and_see_a_store_being_written_as_incomplete(tmp_path):
    from ntkit.store import IncompleteStoreError

    path = tmp_path / "K.zarr"
    model, x = job.build()
    ntkit.compute(model, x[:16], store=path, output="trace", tile=4)
    ref = ntkit.open(path).to_numpy()
    holder = _hold_lock(path)
    try:
        (path / "tiles" / "0.1.json").unlink()  # as if a writer were recomputing that tile
        ks = ntkit.open(path)
        with pytest.raises(IncompleteStoreError):
            ks.to_numpy()
        assert np.array_equal(ks[8:16, 8:16], ref[8:16, 8:16]) and np.isnan(ks[0:4, 4:8]).all()
    finally:
        holder.kill()
        holder.wait()


def test_lock_file_sits_beside_the_store_while_held_and_is_removed_after(tmp_path):
    from ntkit.store.lock import lock_path, store_lock

    path = tmp_path / "K.zarr"
    model, x = job.build()
    with store_lock(path):
        assert lock_path(path) == tmp_path / ".K.zarr.lock" and lock_path(path).exists()
        ntkit.compute(model, x[:8], store=path, output="trace", tile=4)  # re-entrant in this thread
    assert not lock_path(path).exists()
    # a killed run's lock file (flock released by the kernel) is reused, then removed
    lock_path(path).write_text('{"pid": 1, "host": "elsewhere", "started": 0}')
    ntkit.compute(model, x[:8], store=path, output="pntk", tile=4, overwrite=True)
    assert not lock_path(path).exists() and sorted(p.name for p in tmp_path.iterdir()) == ["K.zarr"]
    assert KernelStore(path).metadata["output"] == "pntk"
