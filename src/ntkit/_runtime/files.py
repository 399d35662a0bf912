"""The one way ntkit writes a file: whole or not at all.

A reader (another process, a resumed run, the user) sees the old file or the complete new one,
never a prefix: the bytes go to a temporary file in the same folder, are flushed and fsynced,
the temporary is renamed over the target (atomic on POSIX and Windows), and the folder is
fsynced so the rename survives a power cut. On any error, Ctrl-C included, the temporary is
removed and the error propagates. Temporary names are `.NAME.PID.XXXXXXXX.tmp`: the pid lets a
later run remove the temporaries of a process that died (a store does, on resume).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file or folder by path; file systems that refuse (some folders, some OSes) are let be."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_prefix(path: str | os.PathLike[str], pid: int | None = None) -> str:
    """`.NAME.PID.`: how the temporaries of `path` written by process `pid` (default: this one) begin."""
    return f".{Path(path).name}.{os.getpid() if pid is None else pid}."


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", *, newline: str | None = None) -> Iterator[IO]:
    """`with atomic_open(path) as fh: fh.write(...)`: `path` appears whole when the block ends
    without an error, and is untouched (no temporary left) when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path), suffix=".tmp")
    try:
        with os.fdopen(fd, mode, newline=newline) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write `data` (bytes, or text as UTF-8) to `path` whole or not at all."""
    with atomic_open(path, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)


def atomic_replace(tmp: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """Rename a finished, fsynced temporary `tmp` over `path` and make the rename durable (for
    writers that stream a large file themselves, under `temporary_prefix(path)`)."""
    os.replace(tmp, path)
    fsync_path(Path(path).parent)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (a temporary it names may still be written)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's process
        return True
    return True
