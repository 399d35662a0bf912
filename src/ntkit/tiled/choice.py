"""`method="auto"` for a tiled kernel: measured per-sample costs, counted as the engine loops.

`ntkit.engine.cost` estimates a call from FLOP counts alone and does not see the budget: under a
tight `--memory` both Jacobian contraction and structured derivatives recompute per-sample work
for every row block whose columns do not fit (Jacobian rows; captured factors and per-sample
gradients), and structured derivatives, whose blocks hold O' cotangents per layer output, get
much smaller blocks. `ntkit.compute` therefore times what each method does per sample, on this
machine and on the tile's own inputs, and counts how often the engine does it for every tile
(`ntkit.schedule.features.tile_evaluations` mirrors both loops):

    jacobian    Gram + Σ_tiles tile_evaluations(jacobian block, groups) · t_eval
    structured  contraction + Σ_tiles tile_evaluations(structured block) · t_side

where t_eval is a (sample, parameter group) Jacobian row, t_side one sample's capture and
per-sample gradients, and the Gram step and contractions are the cost model's matmul FLOPs at the
measured matmul rate. The cheaper one runs; the disk cache of Jacobian rows
(`ntkit.schedule.features.plan_features`) is then weighed against that method's estimate, with
this machine's rates measured by `ntkit.engine.rates` (through `ntkit.tiled.features.measure_rates`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any


from ntkit.engine.rates import SideCost, measure_side
from ntkit.schedule import TilePlan
from ntkit.schedule.features import FeaturePlan, plan_features, tile_evaluations
from ntkit.tiled.features import unique_inputs

def structured_seconds(tiles, side: SideCost, budget: int, contraction_s: float) -> float:
    """Estimated seconds of structured derivatives over `tiles` (module docstring). A plan that
    runs term by term captures a tile's samples once when its block holds them all, else each
    row block once and its column blocks once per row block (no cache between pairs)."""
    if side.term_major:
        builds = sum(tile_evaluations(t.r1 - t.r0, t.c1 - t.c0, t.diagonal, side.block, [1], 1, 0) for t in tiles)
    else:
        builds = sum(tile_evaluations(t.r1 - t.r0, t.c1 - t.c0, t.diagonal, side.block, [1], side.bytes_per_sample,
                                      budget) for t in tiles)
    return contraction_s + builds * side.t_side


def _budget_bound(call) -> bool:
    """The budget splits the tile into blocks for Jacobian contraction or structured derivatives."""
    from ntkit.engine.memory import make_plan
    from ntkit.engine.structured import structured_plan

    side = max(call.n1, call.n2)
    plan = make_plan(**call.plan_kw, split_passes=True) if call.cache_bytes is not None else call.plan
    if plan.block < side or plan.n_groups > 1:
        return True
    try:
        sp = structured_plan(call.fm, call.x1, call.n2, call.spec, call.symmetric, call.plan,
                             call.profile.activations)
    except Exception:  # noqa: BLE001 - no structured analysis: nothing to compare
        return False
    return sp.block < side


def _plan_features(model, tile_call, tplan: TilePlan, symmetric: bool, requested: str, store: Path,
                   output, params, device) -> tuple[FeaturePlan, Any, float]:
    """Measure this machine's rates and let `plan_features` choose (see `ntkit.schedule.features`).

    Returns the plan (with both estimates, even when `requested` is "recompute"), the measured
    rates, and the factor from the first tile's entries to all the tiles'."""
    from ntkit.engine.memory import make_plan
    from ntkit.tiled.features import measure_rates

    call = tile_call
    cpu = call.cache_bytes is not None
    eplan = make_plan(**call.plan_kw, split_passes=cpu) if cpu else call.plan
    tiles = tplan.tiles()
    row_bytes = call.spec.n_out(call.n_logits) * call.itemsize
    group_sizes = [sum(call.fm.sizes[n] for n in g) for g in eplan.groups]
    n_unique = unique_inputs(tiles, symmetric, tplan.shared)
    acc_entry = call.itemsize * {"full": call.n_logits**2, "trace": call.n_logits,
                                 "diagonal": call.n_logits}.get(call.spec.kind, 1)
    root = store.parent if not store.exists() else store
    rates = measure_rates(model, call.x1, output, params, device, tplan.engine, root, call.fm.output_fn)
    est = call.estimates()
    first = tiles[0]
    scale = sum(t.n_entries for t in tiles) / max(1, first.n_entries)
    gram_s = est["jacobian"].matmul_flops / rates.matmul_flops_per_s * scale
    try:
        free = shutil.disk_usage(root).free
    except OSError:
        free = 0
    fplan = plan_features(tiles, n_unique=n_unique, n_params=call.fm.n_params, row_bytes=row_bytes,
                          block=eplan.block, group_sizes=group_sizes, feature_groups=rates.feature_groups,
                          engine=tplan.engine, acc_entry_bytes=acc_entry, t_eval=rates.t_eval,
                          write_bps=rates.write_bps, read_bps=rates.read_bps, disk_free=free,
                          requested="auto" if requested == "recompute" else requested, gram_s=gram_s)
    if requested == "recompute":
        fplan = FeaturePlan("recompute", 0, 0, 0, fplan.recompute_s, fplan.disk_s, "asked for")
    return fplan, rates, scale


def _auto_reason(fplan: FeaturePlan, method: str) -> FeaturePlan:
    """`fplan` with its reason saying that features="auto" decided (and why)."""
    import dataclasses

    why = fplan.reason
    if why in ("", "asked for"):
        why = ("each tile computes its inputs' Jacobian rows in memory" if method == "jacobian"
               else f"method {method!r} computes no Jacobian rows to cache")
    return dataclasses.replace(fplan, reason=why if why.startswith("auto:") else f"auto: {why}")


def _auto_method(tile_call, tplan: TilePlan, fplan: FeaturePlan, rates, scale: float) -> tuple[str, float]:
    """Jacobian contraction or structured derivatives for a tiled kernel, from measured
    per-sample costs counted as the engine loops (the module docstring); returns the method
    and structured derivatives' estimated seconds (inf when they cover nothing)."""
    side = measure_side(tile_call)
    if side is None:
        return "jacobian", float("inf")
    contraction_s = tile_call.estimates()["structured"].matmul_flops / rates.matmul_flops_per_s * scale
    struct_s = structured_seconds(tplan.tiles(), side, tplan.engine, contraction_s)
    jac_s = fplan.disk_s if fplan.strategy == "disk" else fplan.recompute_s
    return ("jacobian" if jac_s < struct_s else "structured"), struct_s
