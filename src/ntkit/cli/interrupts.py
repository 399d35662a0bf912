"""What the command line says about Ctrl-C.

typer swallows KeyboardInterrupt: its vendored click (typer >= 0.16) returns exit status 130
without a word, click itself raises Abort. So `main` records every SIGINT (`SigintSeen`, which
otherwise behaves as Python's default handler), a command that reports its own interrupt says so
(`mark_reported`), and `main` says "interrupted" for the others.
"""

from __future__ import annotations

import signal
import threading

_STATE = {"seen": 0, "reported": False}


def mark_reported() -> None:
    """The running command has printed what its interrupt left behind."""
    _STATE["reported"] = True


def reported() -> bool:
    return bool(_STATE["reported"])


def sigint_seen() -> bool:
    return _STATE["seen"] > 0


class SigintSeen:
    """Python's default SIGINT behaviour (KeyboardInterrupt), counting the signals. Inert off
    the main thread and where SIGINT is not Python's default handler (ignored, e.g. a
    background job, or an embedding application's own)."""

    def __init__(self) -> None:
        self._old = None
        _STATE["seen"], _STATE["reported"] = 0, False

    @property
    def count(self) -> int:
        return _STATE["seen"]

    @staticmethod
    def _handler(signum, frame) -> None:
        _STATE["seen"] += 1
        raise KeyboardInterrupt

    def __enter__(self) -> SigintSeen:
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None
