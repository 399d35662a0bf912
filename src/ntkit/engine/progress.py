"""Progress reporting from inside a kernel computation.

The engine counts work in steps (one parameter group × block pair for Jacobian contraction,
one basis chunk × column block for NTK-vector products) and calls `callback(done, total)`
after each; the CLI turns that into a progress bar with rate and ETA.
"""

from __future__ import annotations

from collections.abc import Callable

ProgressCallback = Callable[[int, int], None]


class Progress:
    """Counts steps and forwards them to an optional `callback(done, total)`."""

    def __init__(self, callback: ProgressCallback | None = None) -> None:
        self.callback = callback
        self.total = 0
        self.done = 0

    def start(self, total: int) -> None:
        self.total, self.done = total, 0
        if self.callback is not None:
            self.callback(0, total)

    def advance(self, steps: int = 1) -> None:
        self.done += steps
        if self.callback is not None:
            self.callback(self.done, self.total)
