"""What a tiled kernel's store records about how it was computed, and what a resume checks
against it: the identity of model, data and options, the tile plan and feature choice (fixed
when the store is created, so resumed tiles are bit-identical), the versions, and the repair of
tiles whose data are missing or corrupt."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ntkit.schedule import TilePlan
from ntkit.schedule.features import FeaturePlan
from ntkit.store.errors import StoreError, StoreMismatchError, StoreRepairWarning
from ntkit.store.kernel_store import KernelStore
from ntkit.tiled.sources import DataSource, _shared_prefix


def _identity(model: nn.Module, rows: DataSource, cols: DataSource | None, output: str, params,
              method: str, dtype: torch.dtype, precision: str, shape) -> dict[str, Any]:
    from ntkit.models import model_fingerprint

    return {"model": model_fingerprint(model), "rows": rows.fingerprint(),
            "cols": None if cols is None else cols.fingerprint(), "output": output,
            "params": None if params is None else list(params), "method": method,
            "dtype": str(dtype).replace("torch.", ""), "precision": precision, "shape": list(shape)}


_IDENTITY_WORDS = {"model": "the model's weights or architecture", "rows": "the row data",
                   "cols": "the column data", "output": "--output", "params": "--params",
                   "method": "--method", "dtype": "--dtype", "precision": "--precision", "shape": "the kernel's shape"}


def _check_identity(store: KernelStore, identity: dict[str, Any]) -> None:
    old = store.metadata.get("identity", {})
    diffs = [k for k in identity if old.get(k) != identity[k]]
    if diffs:
        what = "; ".join(f"{_IDENTITY_WORDS.get(k, k)} differ{'s' if k not in ('rows', 'cols') else ''} "
                         f"(store: {_short(old.get(k))}, now: {_short(identity[k])})" for k in diffs)
        raise StoreMismatchError(
            f"cannot resume {store.path}: {what}. Run the original command to finish it, or pass "
            "overwrite=True (--overwrite) to start a new kernel there")


def _short(v: Any) -> str:
    s = str(v)
    return s[:12] + "…" if isinstance(v, str) and len(s) == 64 else s


def _versions() -> dict[str, Any]:
    import platform
    from datetime import datetime, timezone

    import ntkit

    return {"ntkit_version": ntkit.__version__, "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _plan_meta(p: TilePlan) -> dict[str, Any]:
    return {"tile_rows": p.tile_rows, "tile_cols": p.tile_cols, "engine_memory": p.engine, "shared": p.shared,
            "budget": p.budget, "fixed": p.fixed, "planned_peak": p.peak, "n_tiles": p.n_tiles,
            "jacobian_passes": round(p.jacobian_passes, 3)}


def _plan_from_meta(meta: dict[str, Any], n1: int, n2: int, symmetric: bool, entry_bytes: int,
                    input_bytes: int) -> TilePlan:
    p = meta["plan"]
    return TilePlan(n_rows=n1, n_cols=n2, tile_rows=int(p["tile_rows"]), tile_cols=int(p["tile_cols"]),
                    symmetric=symmetric, entry_bytes=entry_bytes, input_bytes=input_bytes,
                    fixed=int(p["fixed"]), engine=int(p["engine_memory"]), budget=int(p["budget"]),
                    shared=int(p.get("shared", 0)))


def _features_meta(f: FeaturePlan) -> dict[str, Any]:
    def num(v: float) -> float | None:
        return None if v != v or v in (float("inf"), float("-inf")) else round(float(v), 4)

    return {"strategy": f.strategy, "chunk": f.chunk, "sub": f.sub, "disk_bytes": f.disk_bytes,
            "recompute_s": num(f.recompute_s), "disk_s": num(f.disk_s), "reason": f.reason}


def _features_from_meta(meta: dict[str, Any]) -> FeaturePlan:
    f = meta.get("plan", {}).get("features") or {}
    return FeaturePlan(f.get("strategy", "recompute"), int(f.get("chunk", 0)), int(f.get("sub", 0)),
                       int(f.get("disk_bytes", 0)), reason=f.get("reason", ""))


def _check_resume_plan(ks: KernelStore, meta: dict[str, Any], tile: int | None, memory: int | str | None,
                       dev: torch.device, n1: int, n2: int) -> None:
    """Refuse a resume whose `tile` or `memory` the store's fixed plan cannot honour.

    A store's tiles and engine budget are fixed when it is created: a tile's bits depend on the
    engine's blocking (block sizes, parameter groups, summation order), so a resumed run keeps
    them to stay bit-identical with the tiles already done. So a different `tile` is refused
    (naming the store's), and so is a `memory` below the store's planned peak; a `memory` at or
    above it is honoured as it is (the plan already fits under it).
    """
    from ntkit.engine.memory import parse_memory
    from ntkit.schedule.tiles import DEFAULT_MAX_TILE

    p = meta["plan"]
    tr, tc = int(p["tile_rows"]), int(p["tile_cols"])
    if tile is not None:
        m = min(tile, DEFAULT_MAX_TILE)
        same = {(min(m, n1), min(m, n2)), (min(m, n1, n2),) * 2}
        if (tr, tc) not in same:
            raise StoreMismatchError(
                f"cannot resume {ks.path} with tile={tile} (--tile {tile}): its tiles are {tr} x {tc}, fixed "
                f"when it was created; resume without --tile (or with --tile {tr}), or pass overwrite=True "
                f"(--overwrite) to start again with tiles of {tile}")
    if memory is not None:
        budget = parse_memory(memory, dev)
        peak = int(p.get("planned_peak", p["budget"]))
        if budget < peak:
            mib = 2**20
            raise StoreMismatchError(
                f"cannot resume {ks.path} under memory={memory!r} ({budget / mib:.0f} MiB): it was planned for "
                f"{int(p['budget']) / mib:.0f} MiB (tiles {tr} x {tc}, engine memory "
                f"{int(p['engine_memory']) / mib:.0f} MiB, planned peak {peak / mib:.0f} MiB), and a smaller plan "
                "would not be bit-identical with the tiles already done; resume with --memory "
                f"{-(-peak // 10**6)}MB or more (or without --memory), or pass "
                "overwrite=True (--overwrite) to recompute under the new budget")


def _repair_on_resume(ks: KernelStore, tplan: TilePlan, rows: DataSource, cols: DataSource | None, prep) -> None:
    """Under the store's lock, before any tile: remove dead writers' temporaries, and un-record
    (so recompute) every recorded tile whose chunks are missing or differ from their checksums,
    saying which. One read of the store, one tile at a time."""
    import warnings

    # The plan is read back from the metadata: damaged, it would write tiles of another shape,
    # or mirror tiles whose rows are not the columns.
    if ((tplan.tile_rows, tplan.tile_cols) != ks.tile_shape
            or (cols is not None and tplan.shared and _shared_prefix(rows, cols, prep) != tplan.shared)):
        raise StoreError(f"cannot resume {ks.path}: its metadata's plan (tiles {tplan.tile_rows} x "
                         f"{tplan.tile_cols}, shared rows {tplan.shared}) does not fit the store or the data "
                         "(damaged zarr.json?); pass overwrite=True (--overwrite) to compute it again")
    ks.clean_temporaries()
    bad = ks.check_tiles()
    if bad:
        ks.discard(t for t, _ in bad)
        keys = ", ".join(t.key for t, _ in bad[:20]) + (", ..." if len(bad) > 20 else "")
        warnings.warn(f"{ks.path}: {len(bad)} recorded tile(s) had missing or corrupt data and are "
                      f"recomputed now: {keys} (first: {bad[0][1].split(';')[0]})", StoreRepairWarning,
                      stacklevel=3)
