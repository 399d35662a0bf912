"""One writer per kernel store: an advisory file lock held by the process that drives a compute.

The lock is `fcntl.flock` on a small file beside the store, `.K.zarr.lock` next to `K.zarr`
(beside, not inside: `--overwrite` deletes the store directory while holding it). The kernel
releases a flock when its process dies, so a crashed or killed run never leaves a stale lock.
The file holds the holder's pid, host, command and start time, which a refused writer is told.
The holder deletes it before unlocking, and a process that locks a file then checks that the
path still names that file (else it opens the new one): the usual way to remove a lock file
without racing a process that opened it just before. Only a killed run leaves it behind, and
the next writer reuses it.

Who takes it: `ntkit.compute` with a store (create, overwrite and resume alike), hence also
`ntkit compute -o K.zarr` and `ntkit verify --repair`. Dask workers write tiles into a store
whose driver holds the lock: they are the same job and never take it. Readers do not need it: a
tile is visible only once its record is written, after its data are durable.

The lock is re-entrant within a thread (the CLI takes it before checking the store, then calls
`ntkit.compute`, which finds it held). On a file system without flock (some network file
systems) writing goes on with a warning: the user must then make sure only one run writes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from ntkit.store.errors import StoreError

__all__ = ["StoreLockedError", "StoreLockWarning", "lock_path", "holds_lock", "store_lock"]


class StoreLockedError(StoreError):
    """Another process is writing the store (the message names it and the fix)."""


class StoreLockWarning(UserWarning):
    """The store could not be locked (no flock on its file system): concurrent writers are not
    detected."""


# lock file (resolved) -> [owning thread id, depth, fd]
_HELD: dict[str, list] = {}
_GUARD = threading.Lock()


def lock_path(store: str | os.PathLike[str]) -> Path:
    """The lock file of the store at `store`: `.NAME.lock` in the same directory."""
    p = Path(os.path.abspath(os.fspath(store)))
    return p.parent / f".{p.name}.lock"


def holds_lock(store: str | os.PathLike[str]) -> bool:
    """True when this thread holds the store's lock (inside `store_lock`)."""
    held = _HELD.get(str(lock_path(store)))
    return held is not None and held[0] == threading.get_ident()


def _holder(path: Path) -> tuple[str, str]:
    try:
        info = json.loads(path.read_text())
        pid, host = int(info["pid"]), str(info["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"another process (see {path})", "stop it"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info.get("started", 0))))
    where = "this machine" if host == socket.gethostname() else host
    cmd = str(info.get("command") or "?")
    return (f"pid {pid} on {where} since {started} ({cmd})",
            f"stop it (kill {pid}{'' if where == 'this machine' else ' on ' + host})")


@contextlib.contextmanager
def store_lock(store: str | os.PathLike[str], command: str | None = None) -> Iterator[None]:
    """Hold the store's write lock for the body.

    Raises:
        StoreLockedError: another process (or another thread of this one) holds it; the message
            names the holder (pid, host, start, command) and the fix.
    """
    path = lock_path(store)
    key = str(path)
    with _GUARD:
        held = _HELD.get(key)
        if held is not None and held[0] == threading.get_ident():
            held[1] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _GUARD:
                _HELD[key][1] -= 1
        return
    if held is not None:  # another thread of this process
        raise StoreLockedError(f"{store} is being written by another thread of this process; wait for "
                               "that ntkit.compute call to finish")
    fd = _acquire(path, store, command)  # None: no lock here (warned); still held "by this thread"
    with _GUARD:
        _HELD[key] = [threading.get_ident(), 1, fd]
    try:
        yield
    finally:
        with _GUARD:
            del _HELD[key]
        if fd is not None:
            _release(fd, path)


def _acquire(path: Path, store, command: str | None) -> int | None:
    """The open, flock-ed lock file; None where this file system cannot lock (warned)."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        warnings.warn(f"cannot lock {store} on this platform: make sure no other run writes to it at "
                      "the same time", StoreLockWarning, stacklevel=4)
        return None
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            warnings.warn(f"cannot create the lock file {path} ({e.strerror}): {store} is written without a "
                          "lock; make sure no other run writes to it at the same time", StoreLockWarning,
                          stacklevel=4)
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                who, fix = _holder(path)
                raise StoreLockedError(f"{store} is being written by {who}; wait for it to finish, or {fix} "
                                       "and run again (a killed run's tiles are kept)") from None
            warnings.warn(f"cannot lock {store} ({e.strerror}; a file system without flock?): make sure no "
                          "other run writes to it at the same time", StoreLockWarning, stacklevel=4)
            return None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder deleted this file after we opened it: lock the new one
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
            "command": command or (" ".join(sys.argv) if sys.argv and sys.argv[0] else "python")}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
    except OSError:
        pass  # the lock holds without its description
    return fd


def _release(fd: int, path: Path) -> None:
    import fcntl

    try:
        path.unlink(missing_ok=True)  # while still locked: see the module docstring
    except OSError:
        pass  # a read-only directory: the file stays and the next writer reuses it
    try:
        # Explicitly: a forked child that inherited the descriptor must not keep the lock.
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
