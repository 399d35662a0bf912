"""Verifying a kernel store: completeness, checksums, finiteness, symmetry and recomputed samples."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ntkit.store.records import CHANGED, PRECISION_RTOL, mirror_tile

if TYPE_CHECKING:
    from ntkit.store.kernel_store import KernelStore


@dataclass
class VerifyReport:
    """What `KernelStore.verify` found; `ok` is True only when nothing is wrong."""

    path: str
    tiles_total: int
    tiles_done: int
    checked: int = 0
    recomputed: int = 0
    max_rel_diff: float | None = None
    reference: str | None = None  # what recomputed tiles were compared with
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.tiles_done == self.tiles_total

    def __str__(self) -> str:
        lines = [f"{self.path}: {self.tiles_done}/{self.tiles_total} tiles complete, {self.checked} checked "
                 f"(checksum, finite{', symmetric' if True else ''}), {self.recomputed} recomputed"
                 + (f" (max relative difference {self.max_rel_diff:.2e})" if self.max_rel_diff is not None else "")
                 + (f" against a {self.reference}" if self.reference and self.recomputed else "")]
        if self.tiles_done < self.tiles_total:
            lines.append(f"  incomplete: {self.tiles_total - self.tiles_done} tiles missing; run the same "
                         "`ntkit compute` command again to finish")
        lines += [f"  problem: {p}" for p in self.problems]
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines)


def verify_store(ks: KernelStore, recompute=None, sample: int = 2, rtol: float | None = None,
                 seed: int = 0) -> VerifyReport:
    """What `KernelStore.verify` does (see its docstring): the checks, and the recomputed samples."""
    tiles = ks.tiles()
    recs = ks.records()
    rep = VerifyReport(str(ks.path), len(tiles), sum(t.key in recs for t in tiles))
    fix = f"recompute it with `ntkit verify {ks.path} --repair` or the same `ntkit compute` command"
    for t in tiles:
        if t.key not in recs:
            continue
        rep.checked += 1
        data, problem = ks._checked_chunk(t, False, recs[t.key])
        if problem is not None:
            rep.problems.append(ks._corrupt_message(t, False, problem))
            continue
        if not np.isfinite(data).all():
            rep.problems.append(f"tile {t.key} has non-finite entries")
        if t.mirror:
            _, problem = ks._checked_chunk(t, True, recs[t.key])
            if problem == CHANGED and not np.array_equal(  # decodable, but not what was written
                    ks._array[ks._chunk_region(t, True)], mirror_tile(data, ks.mirror_perm), equal_nan=True):
                rep.problems.append(f"tile {t.key}'s mirror (rows {t.c0}:{t.c1}, cols {t.r0}:{t.r1}) "
                                    f"is not its transpose: the store is not symmetric; {fix}")
            elif problem is not None:  # (a transpose whose recorded checksum is damaged: readers refuse it too)
                rep.problems.append(ks._corrupt_message(t, True, problem))
        elif t.diagonal and not np.array_equal(data, mirror_tile(data, ks.mirror_perm), equal_nan=True):
            rep.problems.append(f"diagonal tile {t.key} is not symmetric; {fix}")
    if recompute is not None and sample > 0:
        reduced = ks.precision in PRECISION_RTOL and ks.dtype == np.float32
        if rtol is None:
            rtol = PRECISION_RTOL[ks.precision] if reduced else 1e-4 if ks.dtype == np.float32 else 1e-10
        rep.reference = (f"float64 recompute, rtol {rtol:.0e}" if reduced
                         else f"{ks.dtype} recompute, rtol {rtol:.0e}")
        done = [t for t in tiles if t.key in recs]
        rng = np.random.default_rng(seed)
        picks = rng.choice(len(done), size=min(sample, len(done)), replace=False) if done else []
        worst = 0.0
        for k in picks:
            t = done[int(k)]
            fresh = np.asarray(recompute(t))
            if reduced and fresh.dtype != np.float64:
                rep.problems.append(f"tile {t.key} was recomputed in {fresh.dtype}; a {ks.precision} store "
                                    "is checked against a float64 recompute (a float64 copy of the "
                                    "model and inputs)")
                continue
            fresh = fresh.astype(np.float64, copy=False)
            stored, problem = ks._checked_chunk(t, False, recs[t.key])
            if problem is not None:
                continue  # reported above
            stored = stored.astype(np.float64)
            scale = max(np.abs(fresh).max(), 1e-30)
            diff = float(np.abs(fresh - stored).max() / scale)
            worst = max(worst, diff)
            rep.recomputed += 1
            if not diff <= rtol:
                rep.problems.append(f"tile {t.key} recomputed differs from the stored one by {diff:.2e} "
                                    f"(relative, tolerance {rtol:.0e}): the model, data or code changed")
        rep.max_rel_diff = worst
    return rep
