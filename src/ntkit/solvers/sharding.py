"""Rows of a tensor split across devices: EigenPro3's centers, one contiguous shard per device."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["shard_bounds", "shard_rows"]


def shard_bounds(n: int, parts: int) -> list[slice]:
    """Near-equal contiguous slices covering 0..n in order, at most `parts` of them and none empty
    (fewer than `parts` when n < parts; none when n = 0)."""
    bounds = np.linspace(0, n, max(1, parts) + 1).astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def shard_rows(Z: torch.Tensor, devices: Sequence[torch.device]
               ) -> tuple[list[slice], list[torch.device], list[torch.Tensor]]:
    """Split Z (p, ...) by rows over `devices`: (the slices, the devices used, each shard on its device).

    Devices beyond the p rows are left out. A single shard is Z itself (moved only if it sits on
    another device), so a kernel that caches per-center features (EmpiricalNTK) recognizes it by
    identity in every call.
    """
    shards = shard_bounds(Z.shape[0], len(devices))
    devs = list(devices)[: len(shards)]
    parts = [Z if len(shards) == 1 else Z[sh] for sh in shards]
    return shards, devs, [z.to(d) for z, d in zip(parts, devs)]
