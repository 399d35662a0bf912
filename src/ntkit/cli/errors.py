"""What the command line says when something goes wrong, and the checks it makes up front.

`main` (in `ntkit.cli.app`) is the one place that turns exceptions into `error: <message>` and
exit status 2. The types it knows are listed here: ntkit's own input errors (ValueError
subclasses, `UserError`), command-line usage errors, and environment failures whose cause the
user can fix (a file that cannot be written, a full disk, a damaged archive). Anything else is a
bug and keeps its traceback.

The checks (`check_seed`, `check_device`, `check_writable`, `check_free_space`) run before any
computation, so a mistake costs milliseconds, not the whole kernel.
"""

from __future__ import annotations

import errno
import os
import pickle
import shutil
import tempfile
import zipfile
from pathlib import Path

#: Seeds are stored in metadata as JSON integers and fed to torch and numpy generators: both
#: take any integer in this range.
SEED_MAX = 2**63 - 1

# OSErrors whose cause lies outside ntkit, and the fix a message names after the system's words.
_OS_FIXES = {
    errno.ENOSPC: "the disk is full; free some space or choose another location, and run again",
    errno.EDQUOT: "the disk quota is exceeded; free some space or choose another location, and run again",
    errno.EROFS: "choose a location on a writable file system",
    errno.EACCES: "choose another location or change its permissions",
    errno.EPERM: "choose another location or change its permissions",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; check the path",
    errno.EISDIR: "give a file, not a directory",
    errno.EEXIST: "remove it or choose another path",
    errno.ENAMETOOLONG: "use a shorter name",
}


class OutputWriteError(OSError):
    """An output that cannot be written (no space, no permission); its message names the file and fix."""


def _sizeof(n: float) -> str:
    for unit, f in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= f:
            return f"{n / f:.3g} {unit}"
    return f"{int(n)} bytes"


def usage_error_types() -> tuple[type[BaseException], ...]:
    """click's ClickException, from click itself and from typer's vendored copy (typer >= 0.16
    raises its own classes, which are not click's)."""
    found: list[type[BaseException]] = []
    try:
        import click.exceptions as ce

        found.append(ce.ClickException)
    except ImportError:  # pragma: no cover - typer without click
        pass
    try:
        import typer._click.exceptions as te  # type: ignore[import-not-found]

        found.append(te.ClickException)
    except ImportError:
        pass
    return tuple(found)


def abort_types() -> tuple[type[BaseException], ...]:
    """click's Abort (Ctrl-C / EOF at a prompt), from click and typer's vendored copy."""
    found: list[type[BaseException]] = []
    for mod in ("click.exceptions", "typer._click.exceptions"):
        try:
            m = __import__(mod, fromlist=["Abort"])
        except ImportError:
            continue
        if hasattr(m, "Abort"):
            found.append(m.Abort)
    return tuple(found)


def usage_message(e: BaseException) -> str:
    """A click/typer usage error as one line: the problem, then where the help is."""
    msg = e.format_message() if hasattr(e, "format_message") else str(e)  # type: ignore[attr-defined]
    ctx = getattr(e, "ctx", None)
    command = getattr(ctx, "command_path", None) or "ntkit"
    msg = " ".join(msg.split()).rstrip(".")
    return f"{msg}{'' if msg.endswith('?') else '.'} Try '{command} --help' for help."


def os_error_message(e: OSError) -> str | None:
    """One line for an OSError the user can fix, naming the file; None for other errnos."""
    if e.errno not in _OS_FIXES:
        return None
    name = e.filename
    text = e.strerror or str(e)
    # ntkit raises OSError(errno, a message that already names the file and the fix)
    if name is None and e.strerror and e.strerror != os.strerror(e.errno):
        return e.strerror
    where = f"{os.fsdecode(name)}: " if name is not None else ""
    return f"{where}{text}: {_OS_FIXES[e.errno]}"


def known_error_message(e: BaseException) -> str | None:
    """The `error:` line for an exception the user can fix; None for a bug (keep its traceback)."""
    if isinstance(e, OutputWriteError):
        return e.strerror or str(e)
    if isinstance(e, OSError):
        return os_error_message(e)
    if isinstance(e, zipfile.BadZipFile):
        return f"a file is not a readable zip archive ({e}): it is truncated or damaged; download or write it again"
    if isinstance(e, pickle.UnpicklingError):
        return (f"refused to unpickle a file ({e}): ntkit loads plain arrays and tensors only, never "
                "pickled Python objects")
    return None


# ------------------------------------------------------------------------------------------------
# Up-front checks


def check_seed(seed: int, option: str = "--seed") -> int:
    """`seed` if it lies in 0..SEED_MAX, else a ValueError naming the range."""
    if not 0 <= seed <= SEED_MAX:
        raise ValueError(f"{option} {seed} is out of range: seeds are integers from 0 to {SEED_MAX} (2**63 - 1)")
    return seed


def available_devices() -> list[str]:
    """The devices this torch can compute on here: cpu, then cuda:N (and mps) when present."""
    import torch

    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def check_device(device: str | None, option: str = "--device") -> str | None:
    """`device` if torch can compute there; else a ValueError listing the devices available."""
    if device is None:
        return None
    import torch

    avail = available_devices()
    listing = f"available here: {', '.join(avail)}"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{option} {device!r} is not a device name; use cpu, cuda, cuda:N or mps "
                         f"({listing})") from None
    if dev.type == "cpu":
        return device
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch is built without CUDA" if torch.version.cuda is None
                   else "no CUDA GPU is visible (check the driver and CUDA_VISIBLE_DEVICES)")
            raise ValueError(f"{option} {device}: {why}; {listing}")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"{option} {device}: there {'is' if n == 1 else 'are'} only {n} CUDA device(s); {listing}")
        return device
    if dev.type == "mps" and "mps" in avail:
        return device
    raise ValueError(f"{option} {device}: ntkit cannot compute on {dev.type!r} here; {listing}")


def _existing_ancestor(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(path: Path, what: str = "output", *, directory: bool = False) -> None:
    """Refuse, before any work, an output location that cannot be written.

    `path` is a file to be created or replaced (`directory=False`: K.npy, model.npz) or a
    directory to be created or filled (`directory=True`: a store, a report). Missing parent
    folders are fine (they are created when writing); the nearest existing one must be a
    writable folder, checked by creating and removing a temporary file in it (permission bits
    do not tell a read-only file system, nor root's rights).
    """
    path = Path(path)
    if path.exists():
        if directory and not path.is_dir():
            raise ValueError(f"{what} {path} exists and is not a directory: choose another path")
        if not directory and path.is_dir():
            raise ValueError(f"{what} {path} is a directory: give a file name, e.g. {path / 'out'}{path.suffix or ''}")
    probe_dir = path if (directory and path.is_dir()) else _existing_ancestor(path.parent)
    if not probe_dir.is_dir():
        raise ValueError(f"cannot write {what} {path}: {probe_dir} is a file, not a folder; choose another path")
    try:
        fd, tmp = tempfile.mkstemp(dir=probe_dir, prefix=".ntkit-write-check.", suffix=".tmp")
    except OSError as e:
        fix = _OS_FIXES.get(e.errno, "choose another location")
        raise ValueError(f"cannot write {what} {path}: {probe_dir} is not writable ({e.strerror}): {fix}") from None
    os.close(fd)
    os.unlink(tmp)


def check_free_space(path: Path, nbytes: int, what: str = "output") -> None:
    """Refuse, before computing, to write `nbytes` where fewer bytes are free."""
    where = _existing_ancestor(Path(path).parent)
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return  # not knowable here: the write itself reports a full disk
    if nbytes > free:
        raise OutputWriteError(errno.ENOSPC, f"not enough disk space for {what} {path}: it needs {_sizeof(nbytes)} but "
                      f"only {_sizeof(free)} are free on the disk of {where}; free some space or choose "
                      "another output location")


def write_failed(path: Path, nbytes: int, e: OSError, what: str = "output") -> OutputWriteError:
    """The error to raise when writing `path` failed (its temporary file already removed)."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = f", {_sizeof(shutil.disk_usage(_existing_ancestor(Path(path).parent)).free)} free"
        except OSError:
            free = ""
        needs = f"needs {_sizeof(nbytes)}{free}" if nbytes else f"failed{free}"
        return OutputWriteError(e.errno, f"the disk is full: writing {what} {path} {needs}; "
                       "nothing was written. Free some space or choose another output location, and run again")
    fix = _OS_FIXES.get(e.errno, "choose another output location")
    return OutputWriteError(e.errno, f"cannot write {what} {path} ({e.strerror or e}), nothing was written: {fix}")
