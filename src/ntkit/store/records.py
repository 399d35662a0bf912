"""A tile's record and checksums: what makes a stored tile trustworthy."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from ntkit.schedule import Tile

CHANGED = "does not match its checksum (the data changed after it was written)"
# What `verify` allows between a float64 recompute and tiles computed with reduced-precision
# products. tf32x3: the mode's promise (its split products and float64 chunk sums stay near
# 3e-7 of float64 in tests/rules/test_rules_precision.py; the float32 Jacobian passes add ~1e-7). tf32: one
# TF32 rounding per operand (2^-11 each) bounds an entry's error by ~2^-10 ≈ 1e-3 of Σ|a_i·b_i|
# ≤ sqrt(K_aa·K_bb); 3e-3 leaves 3x for tiles whose largest entry is below that (off-diagonal
# tiles), and TF32 Grams measured 1e-4 to 9e-4 of float64 (relative Frobenius norm) at
# P = 10k to 500k on an H100 (PEERS.md).
PRECISION_RTOL = {"tf32x3": 1e-5, "tf32": 3e-3}


def tile_checksum(data: np.ndarray) -> str:
    """sha256 of a tile's bytes in C order (little-endian as stored)."""
    return hashlib.sha256(np.ascontiguousarray(data).view(np.uint8).reshape(-1)).hexdigest()


def mirror_tile(data: np.ndarray, perm: tuple[int, ...] | None = None) -> np.ndarray:
    """The tile at the transposed position: Θ(x2, x1)[b, a] = Θ(x1, x2)[a, b]. `perm`: the
    store's axis permutation for kernels with trace/diagonal axes (`KernelStore.mirror_perm`);
    None for the plain layouts, told apart by their number of axes."""
    if perm is not None:
        return np.ascontiguousarray(data.transpose(perm))
    if data.ndim == 4:
        return np.ascontiguousarray(data.transpose(1, 0, 3, 2))
    return np.ascontiguousarray(np.swapaxes(data, 0, 1))


def layout_perm(meta: dict[str, Any], ndim: int) -> tuple[int, ...] | None:
    """The axis permutation of a mirror tile for a kernel with trace/diagonal output axes (its
    metadata's "output" and "output_shape", see `ntkit.engine.outputs`); None for the plain
    layouts. ValueError when those metadata are damaged."""
    from ntkit.engine.outputs import parse_output

    out = meta.get("output")
    if not (isinstance(out, str) and out.startswith("axes:")):
        return None
    try:
        spec = parse_output(out).resolve(0, tuple(meta["output_shape"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"its metadata's output {out!r} has no valid output_shape ({e})") from None
    return spec.mirror_perm(ndim)


def matches(data: np.ndarray, t: Tile, mirrored: bool, rec: dict[str, Any], perm: tuple[int, ...] | None = None) -> bool:
    """The chunk data of tile `t` (its mirror when `mirrored`) are what its record says."""
    if rec.get("rows") != [t.r0, t.r1] or rec.get("cols") != [t.c0, t.c1]:
        return False
    if mirrored and isinstance(rec.get("mirror_sha256"), str):
        return tile_checksum(data) == rec["mirror_sha256"]
    # stores written before mirror checksums: the transposed copy must be the tile
    return tile_checksum(mirror_tile(data, perm) if mirrored else data) == rec.get("sha256")


def load_record(path: Path) -> dict[str, Any] | None:
    """A tile's record, or None when it is absent or unreadable (the tile is not done)."""
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None
