"""The cost model behind `method="auto"`.

Each method's cost is a FLOP count split into matmul work (which runs near the machine's matmul
peak) and autodiff work (vmapped backward/forward-mode passes, which run well below it). With
N1, N2 inputs, O logits (O' = 1 for `logit:K`/`pntk`, else O), P selected parameters, F forward
FLOPs of one sample, G parameter groups, s = the fraction of the kernel computed: about 1/2 when
symmetric (upper block triangle, and the upper chunk-triangle inside diagonal blocks), else 1):

- jacobian:  autodiff  (N1 + N2·[not symmetric]) · F · G · (1 + 2·O')
             matmul    s · 2·N1·N2·P · {O² full | O trace, diagonal | 1 logit:K, pntk}
- ntk-vp:    autodiff  N1 · F · (1 + 2·O')  +  s · N1·O'·N2 · 2F
- structured:
             autodiff  (N1 + N2·[not symmetric]) · F · (1 + O')   (the capture: one forward, and
                       the backward for the O' outputs, input cotangents only)
                       + Σ over "grads" groups (N1 + N2·[not sym]) · 2·O'·S·out·in (per-sample
                       gradients of convolutions, counted at the autodiff rate like the weight
                       gradients inside Jacobian contraction's backward passes)
             matmul    Σ over parameter groups of the cheaper contraction mode (ntkit.rules.contract):
                       "direct" (dense layers, S positions): s · N1·N2 · (2·S²·in + 2·S²·O'·out
                         [+ 2·S·O'²·out for full]); S = 1: s · N1·N2 · (2·in + 2·O'²·out) for full,
                         s · N1·N2 · (2·in + 2·O'·out) for trace
                       "grads": s · 2·N1·N2·P_group · {O'² full | O' trace, diagonal}
             fallback  the jacobian formula restricted to the parameters without a rule (P_fb, G_fb
                       groups); 0 when every parameter has a rule

`auto` picks the smallest estimated time, matmul FLOPs at MATMUL_RATE and autodiff FLOPs at
AUTODIFF_RATE (relative rates, calibrated on CPU with benchmarks/ntk_methods.py), times
STRUCTURED_MARGIN for structured. Dense nets go to structured (for a Linear layer with S = 1 the
direct contraction costs 2·(in + O'²·out) per pair of samples against 2·O'²·in·out for Jacobian
contraction, and no per-sample Jacobian is formed); on convolution nets structured forms the same
per-sample weight gradients as Jacobian contraction's backward passes, the estimates tie, and the
margin keeps Jacobian contraction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ntkit.engine.memory import Plan
from ntkit.engine.outputs import OutputSpec

# Relative throughputs: autodiff passes (vmapped jacrev/jvp, elementwise ops, small batched
# matmuls) reach roughly a quarter of the matmul peak on CPU.
MATMUL_RATE = 1.0
AUTODIFF_RATE = 0.25
# Structured derivatives pay a gradient check and per-layer Python work per block that the FLOPs
# miss: on convolution nets, where both do the same backward work and the estimates tie, auto
# keeps Jacobian contraction (measured 0.9-1.4x its time there on CPU).
STRUCTURED_MARGIN = 1.1


@dataclass(frozen=True)
class StructuredCost:
    """What the structured analysis found (see `ntkit.engine.structured.analyze`)."""

    matmul_flops: float  # Σ over parameter groups of their chosen contraction mode
    formation_flops: float  # per-sample gradients formed ("grads" mode groups)
    fallback_params: int  # parameters without a rule (Jacobian contraction)
    fallback_groups: int  # plan groups holding them
    covered: bool  # some parameter has a rule


@dataclass(frozen=True)
class Estimate:
    """The estimated cost of one method on one call (time units are matmul-peak FLOPs)."""

    method: str
    matmul_flops: float
    autodiff_flops: float
    margin: float = 1.0  # multiplies the time (overheads the FLOPs do not show)

    @property
    def time(self) -> float:
        return (self.matmul_flops / MATMUL_RATE + self.autodiff_flops / AUTODIFF_RATE) * self.margin


def estimate(
    method: str,
    *,
    n1: int,
    n2: int,
    symmetric: bool,
    n_logits: int,
    spec: OutputSpec,
    n_params: int,
    flops: float,
    plan: Plan,
    structured: StructuredCost | None = None,
) -> Estimate:
    """Estimated FLOPs of `method` ("jacobian", "ntk-vp" or "structured") for one kernel.

    "structured" needs `structured` (the analysis of the rules); without it the estimate is inf.
    """
    o_diff = spec.n_out(n_logits)
    share = 0.55 if symmetric and n1 > 1 else 1.0
    per_sample_rows = flops * (1 + 2 * o_diff)
    if method == "jacobian":
        o_factor = {"full": n_logits**2, "trace": n_logits, "diagonal": n_logits}.get(spec.kind, 1)
        rows = (n1 + (0 if symmetric else n2)) * per_sample_rows * plan.n_groups
        return Estimate(method, share * 2.0 * n1 * n2 * n_params * o_factor, rows)
    if method == "ntk-vp":
        return Estimate(method, 0.0, n1 * per_sample_rows + share * n1 * o_diff * n2 * 2.0 * flops)
    if method == "structured":
        if structured is None:
            return Estimate(method, math.inf, 0.0)
        o_factor = {"full": n_logits**2, "trace": n_logits, "diagonal": n_logits}.get(spec.kind, 1)
        sides = n1 + (0 if symmetric else n2)
        matmul = structured.matmul_flops
        autodiff = structured.formation_flops
        if structured.covered:
            autodiff += sides * flops * (1 + o_diff)
        if structured.fallback_params:
            matmul += share * 2.0 * n1 * n2 * structured.fallback_params * o_factor
            autodiff += sides * per_sample_rows * structured.fallback_groups
        return Estimate(method, matmul, autodiff, STRUCTURED_MARGIN)
    raise ValueError(f"no cost model for method {method!r}")
