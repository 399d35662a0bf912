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
(`ntkit.schedule.features.plan_features`) is then weighed against that method's estimate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ntkit.schedule.features import tile_evaluations

PROBE_SECONDS = 0.1


@dataclass(frozen=True)
class SideCost:
    """Structured derivatives' per-sample work, measured."""

    t_side: float  # seconds per sample: capture, direct-mode operands, per-sample gradients
    bytes_per_sample: int  # what a kept side holds per sample (its cache test)
    block: int  # samples per block under the tile's budget (`structured_plan`)


def measure_side(call) -> SideCost | None:
    """Time structured derivatives' sides on the first samples of a tile call (`_Call`);
    None when the rules cover nothing (then structured derivatives are Jacobian contraction)."""
    from ntkit.engine.structured import _Side, analyze, structured_plan

    fm, spec = call.fm, call.spec
    try:
        an = analyze(fm, call.x1, call.n2, spec, call.symmetric, check=False)
    except torch.OutOfMemoryError:
        raise
    except Exception:  # noqa: BLE001 - the cost model drops structured derivatives alike
        return None
    if not an.covered:
        return None
    plan = structured_plan(fm, call.x1, call.n2, spec, call.symmetric, call.plan, call.profile.activations)
    direct = [t for t in an.terms if t.mode == "direct"]
    grads = [t for t in an.terms if t.mode == "grads"]
    grad_elems = sum(t.size for t in grads) * spec.n_out(call.n_logits)
    sync = torch.cuda.synchronize if fm.device.type == "cuda" else (lambda *a: None)
    most = int(min(call.x1.shape[0], plan.block))
    _Side(fm, an, call.x1[:1], spec, direct, True, None, grads)  # warm-up
    k = min(4, most)
    while True:
        sync()
        t = time.perf_counter()
        side = _Side(fm, an, call.x1[:k], spec, direct, True, None, grads)
        sync()
        seconds = time.perf_counter() - t
        nbytes = side.nbytes(grad_elems, call.itemsize)
        del side
        if seconds >= PROBE_SECONDS or k >= most:
            break
        k = min(most, 4 * k)
    return SideCost(t_side=seconds / k, bytes_per_sample=max(1, nbytes // k), block=plan.block)


def structured_seconds(tiles, side: SideCost, budget: int, contraction_s: float) -> float:
    """Estimated seconds of structured derivatives over `tiles` (module docstring)."""
    builds = sum(tile_evaluations(t.r1 - t.r0, t.c1 - t.c0, t.diagonal, side.block, [1], side.bytes_per_sample,
                                  budget) for t in tiles)
    return contraction_s + builds * side.t_side
