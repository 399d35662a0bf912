"""The cost model behind `method="auto"`.

Each method's cost is a FLOP count split into matmul work (which runs near the machine's matmul
peak) and autodiff work (vmapped backward/forward-mode passes, which run well below it). With
N1, N2 inputs, O logits (O' = 1 for `logit:K`/`pntk`, else O), P selected parameters, F forward
FLOPs of one sample, G parameter groups, s = the fraction of the kernel computed: about 1/2 when
symmetric (upper block triangle, and the upper chunk-triangle inside diagonal blocks), else 1):

- jacobian:  autodiff  (N1 + N2·[not symmetric]) · F · G · (1 + 2·O')
             matmul    s · 2·N1·N2·P · {O² full | O trace, diagonal | 1 logit:K, pntk}
- ntk-vp:    autodiff  N1 · F · (1 + 2·O')  +  s · N1·O'·N2 · 2F

`auto` picks the smaller estimated time, matmul FLOPs at MATMUL_RATE and autodiff FLOPs at
AUTODIFF_RATE (relative rates, calibrated on CPU with benchmarks/ntk_methods.py). Dense nets with
many logits and `full` go to ntk-vp (F ≈ 2P, so ntk-vp saves the factor O/2); convolutions
(F ≫ P) and reduced outputs go to jacobian.
"""

from __future__ import annotations

from dataclasses import dataclass

from ntkit.engine.memory import Plan
from ntkit.engine.outputs import OutputSpec

# Relative throughputs: autodiff passes (vmapped jacrev/jvp, elementwise ops, small batched
# matmuls) reach roughly a quarter of the matmul peak on CPU.
MATMUL_RATE = 1.0
AUTODIFF_RATE = 0.25


@dataclass(frozen=True)
class Estimate:
    """The estimated cost of one method on one call (time units are matmul-peak FLOPs)."""

    method: str
    matmul_flops: float
    autodiff_flops: float

    @property
    def time(self) -> float:
        return self.matmul_flops / MATMUL_RATE + self.autodiff_flops / AUTODIFF_RATE


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
) -> Estimate:
    """Estimated FLOPs of `method` ("jacobian" or "ntk-vp") for one kernel."""
    o_diff = spec.n_out(n_logits)
    share = 0.55 if symmetric and n1 > 1 else 1.0
    per_sample_rows = flops * (1 + 2 * o_diff)
    if method == "jacobian":
        o_factor = {"full": n_logits**2, "trace": n_logits, "diagonal": n_logits}.get(spec.kind, 1)
        rows = (n1 + (0 if symmetric else n2)) * per_sample_rows * plan.n_groups
        return Estimate(method, share * 2.0 * n1 * n2 * n_params * o_factor, rows)
    if method == "ntk-vp":
        return Estimate(method, 0.0, n1 * per_sample_rows + share * n1 * o_diff * n2 * 2.0 * flops)
    raise ValueError(f"no cost model for method {method!r}")
