"""The cost model behind `method="auto"`.

Each method's cost is a FLOP count split by the rate it runs at: matmul work (contractions, near
the machine's matmul peak), autodiff work (vmapped backward/forward-mode passes, well below it)
and, for structured derivatives, forming per-sample gradients by batched matmuls (slower still,
see `ntkit.rules.contract.formation_weight`). Time units are FLOPs at the matmul peak. With N1,
N2 inputs, O logits (O' = 1 for `logit:K`/`pntk`, else O), P selected parameters, F forward
FLOPs of one sample, G parameter groups, sides = N1 + N2·[not symmetric], s = the fraction of
the kernel computed (about 1/2 when symmetric: upper block triangle, and the upper
chunk-triangle inside diagonal blocks, else 1):

- jacobian:  autodiff  sides · F · (G·(1 + O') + O') · cache(rows batch · O')  (each group's pass: the
                       forward and the input cotangents; weight gradients once over all groups)
             matmul    s · 2·N1·N2·P · {O² full | O trace, diagonal | 1 logit:K, pntk}
- ntk-vp:    autodiff  N1 · F · (1 + 2·O')  +  s · N1·O'·N2 · 2F
- structured:
             autodiff  CAPTURE_WEIGHT · sides · F · (1 + O') · cache(block · {1 per-output backward | O'})
                       (the capture: one forward, and the backward for the O' outputs, input
                       cotangents only)
             formation Σ over "grads" terms of their per-sample gradient FLOPs (sides · 2·O'·S·out·in
                       per convolution) at 1/formation_weight(O'·out) of the matmul rate
             matmul    Σ over parameter groups of the cheaper contraction mode (ntkit.rules.contract):
                       "direct" (dense layers, S positions): s · N1·N2 · (2·S²·in + 2·S²·O'·out
                         [+ 2·S·O'²·out for full]); S = 1: s · N1·N2 · (2·in + 2·O'²·out) for full,
                         s · N1·N2 · (2·in + 2·O'·out) for trace
                       "grads": s · 2·N1·N2·P_group · {O'² full | O' trace, diagonal}
             fallback  the jacobian formula restricted to the parameters without a rule (P_fb, G_fb
                       groups: weight gradients sides · F · O' · P_fb / P); 0 when every parameter
                       has a rule
- memory traffic (every method, at BYTE_COST matmul-peak FLOPs per byte): the per-sample rows it
  forms, sides · O' · itemsize bytes per parameter: all P for jacobian, the "grads" terms' and the
  fallback parameters for structured, none for ntk-vp

cache(b) is the slowdown of a vmapped pass whose largest activation (b copies of one sample's
largest layer output) overflows the CPU cache: (bytes / CACHE_BYTES)^CACHE_EXPONENT above
CACHE_BYTES, else 1 (none on GPUs). Jacobian contraction splits its passes so that they fit
(`Plan.rows_batch`), so it matters for one huge sample, and for the capture of structured
derivatives, which runs a whole block at once.

`auto` picks the smallest estimated time. Dense nets go to structured: for a Linear layer
(S = 1) the direct contraction costs 2·(in + O'²·out) per pair of samples against 2·O'²·in·out
for Jacobian contraction, and no per-sample Jacobian is formed. On convolution nets structured
derivatives form the same per-sample weight gradients as Jacobian contraction's backward passes
(on CPU by the convolution's own weight backward, `ntkit.rules.conv.ConvFactor`: one call per
sample, or all samples as the groups of one call when a sample has few gradient rows), but
capture cotangents only once for all layers and skip the vmapped per-(sample, output) weight
gradients, so they run 0.7-1.1x the time of Jacobian contraction (benchmarks/cost_model.py);
the estimates put them at 0.86-0.98x, and `auto` picks within 10% of the faster method on that
grid.

Calibration (relative rates, CPU, 2 threads, benchmarks/workloads.py and benchmarks/cost_model.py,
methods timed side by side in one process): AUTODIFF_RATE and the matmul rate from dense nets,
FORMATION_WEIGHT/FORMATION_ROWS (in ntkit.rules.contract), CONV_FORMATION_WEIGHT and
CONV_CALL_FLOPS (ntkit.rules.conv) and CAPTURE_WEIGHT from the structured/Jacobian time ratio on
convolution nets at O' = 10 and O' = 1, CACHE_EXPONENT from W2-CNN's Jacobian passes of
4 to 41 MB (1.24x at 8 MB, 1.36x at 16 MB, 1.74x at 41 MB against 4 MB).
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
# A vmapped pass whose largest activation is k times the cache runs k^CACHE_EXPONENT slower.
CACHE_EXPONENT = 0.24
# The capture's passes (hooks, one backward per output on CPU, sample-major copies) against
# Jacobian contraction's vmapped passes, and a margin for what neither FLOP count shows. Least
# squares fits on benchmarks/cost_model.py's grid put the capture weight between 0.7 and 1.15
# (it trades off against ntkit.rules.conv.CONV_FORMATION_WEIGHT: the grid cannot separate them);
# 1.0 with CONV_FORMATION_WEIGHT = 2.7 picks within 7% of the faster method on all but two of its
# 36 convolution cases (see benchmarks/results/cost_model.md).
CAPTURE_WEIGHT = 1.0
STRUCTURED_MARGIN = 1.0
# Memory traffic, in matmul-peak FLOPs per byte: the per-sample Jacobian rows that Jacobian
# contraction forms (O'·P per sample: written by the vmapped backward, copied into their block,
# read back by the Gram products) and the per-sample gradients of structured derivatives' "grads"
# terms stream through main memory, which no FLOP count shows. About four passes at ~20 GB/s
# against a ~180 GFLOP/s float32 matmul peak (this 2-core CPU) make ~32; a GPU's ratio is similar
# (~50 TFLOP/s over ~3 TB/s, a few passes). Without it the FLOP model put Jacobian contraction at
# half its time on models with many parameters per forward FLOP (a LayerNorm + GELU block over 16
# tokens: estimated 0.92x structured derivatives' time, measured 1.6x) and picked it there; from
# 24 up the pick is right on benchmarks/auto_zoo.py, and no case of benchmarks/cost_model.py's
# grid (convolution nets, F >> P) changes its pick.
BYTE_COST = 32.0
# Jacobian rows of a model that vmap cannot batch over samples (transformers' attention-mask
# branches, in-place buffer updates) run one sample at a time (ntkit.engine.functional): a
# forward and one backward vmapped over the outputs per sample. Measured on a 1-layer BERT over
# 32 tokens (benchmarks/auto_zoo.py): 8x the vmapped estimate; 6x is charged.
LOOP_PENALTY = 6.0


def cache_penalty(nbytes: float, cache_bytes: int | None) -> float:
    """Slowdown of a vmapped pass whose largest activation takes `nbytes` (1 within the cache)."""
    if cache_bytes is None or nbytes <= cache_bytes:
        return 1.0
    return (nbytes / cache_bytes) ** CACHE_EXPONENT


@dataclass(frozen=True)
class StructuredCost:
    """What the structured analysis found (see `ntkit.engine.structured.analyze`)."""

    matmul_flops: float  # Σ over parameter groups of their chosen contraction mode
    formation_flops: float  # per-sample gradients formed ("grads" mode groups)
    fallback_params: int  # parameters without a rule (Jacobian contraction)
    fallback_groups: int  # plan groups holding them
    covered: bool  # some parameter has a rule
    formation_time: float | None = None  # formation at its own rate (None: formation_flops at
    # the autodiff rate)
    per_output: bool = True  # the capture runs one backward per output (else one vmapped over O')
    grad_params: int = 0  # parameters whose per-sample gradients the "grads" terms form


@dataclass(frozen=True)
class Estimate:
    """The estimated cost of one method on one call (time units are matmul-peak FLOPs)."""

    method: str
    matmul_flops: float
    autodiff_flops: float
    margin: float = 1.0  # multiplies the time (overheads the FLOPs do not show)
    formation_time: float = 0.0  # structured: forming per-sample gradients, already in time units
    cache: float = 1.0  # slowdown of the autodiff passes by cache overflow (see cache_penalty)
    traffic: float = 0.0  # bytes of per-sample Jacobian rows / gradients through main memory

    @property
    def time(self) -> float:
        return (self.matmul_flops / MATMUL_RATE + self.formation_time
                + self.cache * self.autodiff_flops / AUTODIFF_RATE + BYTE_COST * self.traffic) * self.margin


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
    peak: int = 0,
    itemsize: int = 4,
    cache_bytes: int | None = None,
    loop: bool = False,
) -> Estimate:
    """Estimated cost of `method` ("jacobian", "ntk-vp" or "structured") for one kernel.

    "structured" needs `structured` (the analysis of the rules); without it the estimate is inf.
    peak: elements of one sample's largest layer output; cache_bytes: the CPU cache budget of a
    vmapped pass (None: no cache model, as on GPUs). loop: the model's Jacobian rows run one
    sample at a time (vmap cannot batch it): LOOP_PENALTY on them, and NTK-vector products (which
    then fall back to Jacobian contraction) are not a candidate.
    """
    o_diff = spec.n_out(n_logits)
    share = 0.55 if symmetric and n1 > 1 else 1.0
    per_sample_rows = flops * (1 + 2 * o_diff)

    def rows_flops(params: int, groups: int) -> float:
        # Per sample: each group's pass runs the forward and the input cotangents of every layer
        # for the O' outputs (F each); weight gradients (F for all parameters) only for the
        # group's own parameters, about their share of F.
        return flops * (groups * (1 + o_diff) + o_diff * params / max(n_params, 1))
    o_factor = {"full": n_logits**2, "trace": n_logits, "diagonal": n_logits}.get(spec.kind, 1)
    sides = n1 + (0 if symmetric else n2)
    sample_bytes = peak * itemsize
    jac_cache = cache_penalty((plan.rows_batch or plan.block) * o_diff * sample_bytes, cache_bytes)
    if loop:
        jac_cache *= LOOP_PENALTY
        if method == "ntk-vp":
            return Estimate(method, math.inf, 0.0)
    row_bytes = sides * o_diff * itemsize  # per parameter whose per-sample rows are formed
    if method == "jacobian":
        rows = sides * rows_flops(n_params, plan.n_groups)
        return Estimate(method, share * 2.0 * n1 * n2 * n_params * o_factor, rows, cache=jac_cache,
                        traffic=row_bytes * n_params)
    if method == "ntk-vp":
        return Estimate(method, 0.0, n1 * per_sample_rows + share * n1 * o_diff * n2 * 2.0 * flops)
    if method == "structured":
        if structured is None:
            return Estimate(method, math.inf, 0.0)
        matmul = structured.matmul_flops
        if structured.formation_time is None:
            formation, autodiff = 0.0, structured.formation_flops
        else:
            formation, autodiff = structured.formation_time, 0.0
        capture = 0.0
        if structured.covered:
            capture = CAPTURE_WEIGHT * sides * flops * (1 + o_diff)
        per_pass = plan.block * sample_bytes * (1 if structured.per_output else o_diff)
        autodiff += capture * cache_penalty(per_pass, cache_bytes)
        if structured.fallback_params:
            matmul += share * 2.0 * n1 * n2 * structured.fallback_params * o_factor
            autodiff += sides * rows_flops(structured.fallback_params, structured.fallback_groups) * jac_cache
        traffic = row_bytes * (structured.grad_params + structured.fallback_params)
        return Estimate(method, matmul, autodiff, STRUCTURED_MARGIN, formation, traffic=traffic)
    raise ValueError(f"no cost model for method {method!r}")
