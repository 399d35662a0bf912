"""Symmetric kernels (x2 = x1): compute the upper triangle only, mirror the rest exactly.

Θ(x, x) is symmetric under (n, a) <-> (m, b). Across blocks only pairs (i, j ≥ i) are computed;
inside a diagonal block the rows are split into chunks and chunk k computes only the columns from
its own start on, so about half of that block's work is skipped as well.
"""

from __future__ import annotations

import math

import torch

from ntkit._runtime.blocks import block_slices


def transpose(block: torch.Tensor) -> torch.Tensor:
    """Θ[m, n, b, a] from Θ[n, m, a, b] (any of the output layouts)."""
    return block.permute(1, 0, 3, 2) if block.ndim == 4 else block.transpose(0, 1)


def chunks(start: int, stop: int, size: int) -> list[slice]:
    """[start, stop) in consecutive slices of at most `size`."""
    return block_slices(stop, size, start)


def fill_lower_in_block(out: torch.Tensor, block: slice, parts: list[slice]) -> None:
    """Complete a diagonal block whose row chunk `p` holds only the columns from p.start on."""
    for p in parts:
        if p.start > block.start:
            out[p, block.start : p.start] = transpose(out[block.start : p.start, p])


def mirror(out: torch.Tensor, blocks: list[slice]) -> None:
    """Fill the lower block triangle from the upper one and make diagonal blocks exactly symmetric.

    Diagonal blocks are averaged with their transpose: entries computed on both sides of the
    diagonal differ by rounding, and (a + b) / 2 is bitwise symmetric.
    """
    for i, r in enumerate(blocks):
        _symmetrize(out, r)
        for c in blocks[i + 1 :]:
            out[c, r] = transpose(out[r, c])


# Entries of the sub-blocks a diagonal block is averaged by (4 MB in float32). The average of a
# whole block at once took temporaries of its size (72 MB for one 3,000-sample trace block; 151 MB
# each for 32 samples of a per-pixel `full` kernel, 3 x 8 x 8 = 192 outputs, whatever the memory
# budget) and ran out of cache: that whole call takes 0.59x the time by Jacobian contraction and
# 0.63x by structured derivatives in sub-blocks, a per-token `full` kernel (O = 128) 0.88-0.92x,
# trace and diagonal kernels the same (benchmarks/symmetrize.py, results/symmetrize.md).
SYMMETRIZE_ELEMENTS = 1 << 20


def _symmetrize(out: torch.Tensor, r: slice) -> None:
    """out[r, r] = (out[r, r] + its transpose) / 2, sub-block by sub-block (the same numbers)."""
    per_pair = math.prod(out.shape[2:])  # O'², O' or 1 entries per sample pair
    rows = max(1, math.isqrt(SYMMETRIZE_ELEMENTS // per_pair))
    parts = chunks(r.start, r.stop, rows)
    for i, p in enumerate(parts):
        for q in parts[i:]:
            avg = out[p, q] + transpose(out[q, p])  # a + b = b + a: the average is bitwise symmetric
            avg.mul_(0.5)
            out[p, q] = avg
            if q != p:
                out[q, p] = transpose(avg)
