"""The one block slicer: how every loop over samples, rows or columns is cut."""

from __future__ import annotations


def block_slices(stop: int, size: int, start: int = 0) -> list[slice]:
    """[start, stop) as consecutive slices of at most `size` (at least 1) items, in order.

    >>> block_slices(7, 3)
    [slice(0, 3, None), slice(3, 6, None), slice(6, 7, None)]
    """
    size = max(1, int(size))
    return [slice(s, min(s + size, stop)) for s in range(start, stop, size)]
