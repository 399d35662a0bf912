"""`ntkit._runtime.files`: the one atomic write every writer in ntkit uses."""

from __future__ import annotations

import pytest

from ntkit._runtime.files import atomic_open, atomic_replace, atomic_write, temporary_prefix


def _temporaries(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_write_replaces_whole(tmp_path):
    target = tmp_path / "sub" / "a.json"
    atomic_write(target, "first")
    atomic_write(target, b"second")
    assert target.read_bytes() == b"second"
    assert _temporaries(target.parent) == []


def test_failure_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "k.npy"
    target.write_bytes(b"old")
    for error in (RuntimeError("disk"), KeyboardInterrupt()):
        with pytest.raises(type(error)):
            with atomic_open(target) as fh:
                fh.write(b"half of the new")
                raise error
        assert target.read_bytes() == b"old"
        assert _temporaries(tmp_path) == []


def test_text_mode_and_newline(tmp_path):
    target = tmp_path / "t.csv"
    with atomic_open(target, "w", newline="") as fh:
        fh.write("a,b\r\n1,2\r\n")
    assert target.read_bytes() == b"a,b\r\n1,2\r\n"


def test_temporaries_are_named_for_their_file_and_process(tmp_path):
    import os

    target = tmp_path / "x.bin"
    with atomic_open(target) as fh:
        (name,) = _temporaries(tmp_path)
        assert name.startswith(f".x.bin.{os.getpid()}.") and name.startswith(temporary_prefix(target))
        fh.write(b"1")
    streamed = tmp_path / f"{temporary_prefix(target)}manual.tmp"
    streamed.write_bytes(b"2")
    atomic_replace(streamed, target)
    assert target.read_bytes() == b"2" and _temporaries(tmp_path) == []
