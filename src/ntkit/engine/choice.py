"""`method="auto"`: the cost model's choice, checked by measurement where that is cheap.

The cost model (`ntkit.engine.cost`) ranks the methods by FLOPs at fixed relative rates. Its
constants were fitted on a few architectures, so on shapes it never saw (the direct contraction
of a sequence layer, a model vmap cannot batch) it can be off by 2x. cuDNN's benchmark mode,
FFTW's MEASURE plans and Triton's autotuner face the same problem and measure; so does this.

For a call whose best estimate is at least `MIN_PROBE_SECONDS` (at this machine's measured matmul
rate), every method estimated within `RULE_OUT` of the best is run for real on a slice of the
call's own inputs: the same strategy, plan and structured-derivative analysis as the full call,
on one block pair of k × k samples (k as large as `PROBE_SHARE` of the call's estimated time
allows, at least `MIN_K`: smaller blocks run far below the full call's rates). The engine's
progress steps say which work each interval of the probe was: per-sample work (Jacobian rows,
captures, per-sample gradients, VJPs: "rows") or per-pair work (contractions, JVPs against
columns: "blocks"), so one probe gives a per-sample time a and a per-pair time b, and each
candidate's time for the whole call is a·(its inputs) + b·(its sample pairs). The fastest runs;
it must beat the cost model's choice by `TIE` to replace it (timing noise). Smaller calls, and calls whose inputs are too few to cut a probe from, keep the cost
model's choice. The probes are counted in the call's time; the decision is cached with the
plan (`ntkit.engine.cache`: per model structure, input shape, output, dtype, device, sizes, the
budget as asked and the blocks it gave), so `ntk_fn` and repeated calls pay nothing, and a changed model probes again.

Calls too short to probe learn from their own repeats instead (`ntkit.ntk` and `ntk_fn`, not the
tiles of `ntkit.compute`, whose kernels must not depend on what ran before): every method
estimated within `EXPLORE` of the cost model's choice runs once, on a later call of the same
shape, and the call's time is recorded (`record`); once each has run, the fastest on those real
calls is kept: one that beat the cost model's choice by `TRIAL_TIE` is first timed once more, and
the choice too (a single call can be a noisy one), and wins on the faster of `TRIAL_RUNS` calls each. The cost model's errors on
architectures it was never fitted on (a layer vmap batches slowly, a contraction far below the
matmul peak) are then corrected after a few calls, as cuDNN's benchmark mode does on a shape's
first call; the price is one or two calls of each close candidate. A method's first call on a
shape includes its one-time analysis, so a challenger must win that round despite it (within the
few percent the analysis takes); the confirming round compares warm calls.

`decide(call)` returns a `Choice` with the estimates, the measured extrapolations and the
reason, which `ntkit.plan` and `--explain` print.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field, replace

import torch

from ntkit.engine.cost import AUTODIFF_RATE, BYTE_COST, MATMUL_RATE, Estimate
from ntkit.engine.progress import Progress
from ntkit.engine.rates import matmul_rate, sync as _sync

__all__ = ["Choice", "PhaseClock", "decide", "record", "run_auto", "time_probe", "EXPLORE", "MIN_K", "MIN_PROBE_SECONDS",
           "PROBE_SHARE", "RULE_OUT", "TIE", "TRIAL_RUNS", "TRIAL_TIE"]

MIN_PROBE_SECONDS = 2.0  # a call estimated shorter keeps the cost model's choice
PROBE_SHARE = 0.08  # the probes (all candidates) may take this share of the call's estimated time
RULE_OUT = 3.0  # methods estimated slower than this factor times the best are not probed
TIE = 1.15  # a measured winner must beat the cost model's choice by this factor to replace it
SETTLE_VMAP_FLOPS = 1e9  # calls estimated above this (~5 ms at the matmul rate) check vmap first
MAX_K = 256  # samples per probe side (the probe's purpose is rates, not entries)
EXPLORE = 1.6  # unprobed calls: methods estimated within this factor of the choice run once each
# (the cost model was 1.4-1.6x off on unseen convolution nets with GroupNorm and concatenations)
TRIAL_TIE = 1.05  # on real calls, another method must beat the cost model's choice by this factor
TRIAL_RUNS = 2  # ... on the fastest of this many calls of each (one call can be a noisy one)
MIN_K = 48  # smaller probes run far below the full call's rates (16 x 16 Jacobian-contraction probes
# extrapolated to 2-9x the real time, 64 x 64 to 1.1-1.4x): such calls keep the cost model's choice


@dataclass(frozen=True)
class Choice:
    """What `auto` decided for one call, and why."""

    method: str
    model_method: str  # the cost model's own choice
    estimates: dict[str, float]  # seconds: the cost model at the measured matmul rate
    measured: dict[str, float] = field(default_factory=dict)  # seconds extrapolated from the probes
    probe_seconds: float = 0.0  # spent probing (0 when the decision came from the cache)
    reason: str = ""
    explore: tuple[str, ...] = ()  # methods to try once each on later calls (see `record`)
    trials: dict[str, float] = field(default_factory=dict)  # seconds of real calls, per method
    trying: bool = False  # `method` runs to be timed (see `record`), not because it won
    plan_shape: tuple[int, int] = (0, 0)  # (block, parameter groups) of the plan decided for

    def describe(self) -> str:
        """One line for `ntkit.plan` / `--explain`."""
        trials = ""
        if self.trials:
            trials = "; real calls: " + ", ".join(f"{m} {t:.3g} s" for m, t in sorted(self.trials.items(), key=lambda kv: kv[1]))
        if not self.measured:
            return f"auto: {self.method} ({self.reason}{trials})"
        got = ", ".join(f"{m} {t:.3g} s" for m, t in sorted(self.measured.items(), key=lambda kv: kv[1]))
        return f"auto: {self.method} (measured on a slice, extrapolated: {got}; probes took {self.probe_seconds:.3g} s; {self.reason})"


def _parts(e: Estimate) -> tuple[float, float]:
    """(per-sample part, per-pair part) of an estimate, in its time units."""
    per_sample = (e.formation_time + e.cache * e.autodiff_flops / AUTODIFF_RATE + BYTE_COST * e.traffic) * e.margin
    return per_sample, e.matmul_flops / MATMUL_RATE * e.margin


def _counts(call) -> tuple[float, float]:
    """(inputs whose per-sample work the call does, sample pairs it contracts)."""
    if call.symmetric:
        return float(call.n1), call.n1 * (call.n1 + 1) / 2.0
    return float(call.n1 + call.n2), float(call.n1) * call.n2


class PhaseClock(Progress):
    """A progress sink that times the intervals between the engine's steps by the kind of work
    each step finished: per-sample ("rows" counted) or per-pair ("blocks" counted)."""

    def __init__(self) -> None:
        super().__init__(None)
        self.last = time.perf_counter()
        self.rows_s = self.pairs_s = 0.0
        self.rows = 0

    def advance(self, steps: int = 1, counts: dict[str, int] | None = None) -> None:
        now = time.perf_counter()
        dt, self.last = now - self.last, now
        c = counts or {}
        if "rows" in c and "blocks" not in c:
            self.rows_s += dt
            self.rows += c["rows"]
        else:
            self.pairs_s += dt
        super().advance(steps, counts)


def time_probe(call, method: str, k: int) -> tuple[float, float]:
    """(seconds per input, seconds per sample pair) of `method` (resolved) on one k × k block
    pair of `call`'s inputs (a symmetric call's off-diagonal block)."""
    first = k if call.symmetric else 0
    pairs = [(slice(0, k), slice(first, first + k))]
    plan = call.plan_for(method)
    out = torch.zeros(call.spec.shape(k, first + k, call.n_logits), dtype=call.fm.dtype, device=call.fm.device)
    clock = PhaseClock()
    _sync(call.fm.device)
    t = time.perf_counter()
    clock.last = t
    call.run_pairs(method, plan, out, pairs, clock)
    _sync(call.fm.device)
    total = time.perf_counter() - t
    rows_s = clock.rows_s if clock.rows else 0.0
    return rows_s / (2 * k), max(total - rows_s, 0.0) / (k * k)


def _max_k(call) -> int:
    """The largest probe side the call's inputs allow."""
    if call.symmetric:
        return min(call.n1 // 2, MAX_K)
    return min(call.n1, call.n2, MAX_K)


def _key(call, scale: float) -> tuple:
    # The budget as asked, not its bytes, nor the blocks and groups it gave (`_same_plan` compares
    # those): a default budget follows free memory, and a repeated call must not decide (probe,
    # try methods) again because another process allocated.
    return ("choice", call.fm.sig, str(call.final), call.n1, call.n2, call.symmetric, repr(call.memory),
            call.plan.rows_batch, call.batch_size, round(math.log2(max(scale, 1.0))))


PLAN_SLACK = 1.5  # a cached decision holds while the blocks and groups stay within this factor


def _same_plan(choice: Choice, call) -> bool:
    """Whether `choice` was decided for (about) `call`'s plan: blocks and parameter groups within
    `PLAN_SLACK` (one more or fewer sample per block is the same decision; a budget that halves the
    blocks is not)."""
    block, groups = choice.plan_shape
    return (max(block, call.plan.block) <= PLAN_SLACK * min(block, call.plan.block)
            and max(groups, call.plan.n_groups) <= PLAN_SLACK * min(groups, call.plan.n_groups))


def decide(call, scale: float = 1.0, explore: bool = False) -> Choice:
    """The method `auto` runs for `call` (a `ntkit.engine.call.KernelCall`); see the module
    docstring. `scale`: how many such calls the decision is for (the tiles of `ntkit.compute`),
    which the probes may take their share of. explore: follow the times `record` kept for
    earlier calls of this shape (trying each close candidate once; `ntkit.ntk` only)."""
    fm = call.fm
    key = _key(call, scale)
    cached = fm.memo.get(key)
    if cached is not None and _same_plan(cached, call):
        if explore and scale <= 1.0:
            return _after_trials(call, key, cached)
        return replace(cached, probe_seconds=0.0, reason=cached.reason + " (cached)")
    est = call.estimates()
    first = min(est, key=lambda m: est[m].time)
    if fm.vmappable is None and est[first].time >= SETTLE_VMAP_FLOPS and call.vmap_may_matter(first):
        # Whether vmap batches the model changes Jacobian contraction's cost several-fold
        # (cost.LOOP_PENALTY); a call this size affords the one-sample check.
        call.settle_vmap()
        est = call.estimates()
    finite = {m: e for m, e in est.items() if math.isfinite(e.time)}
    model_method = min(finite, key=lambda m: finite[m].time)
    if len(finite) > 1 and _runs_as(call, model_method) != model_method:
        # NTK-vector products without (correct) vmapped forward AD run as Jacobian contraction:
        # `auto` picks among the others, and says nothing of a method nobody asked for.
        del finite[model_method]
        model_method = min(finite, key=lambda m: finite[m].time)
    # A call that would be short even at a slow 10 GFLOP/s needs no measured rate (a small call
    # pays nothing for the decision).
    rate = 1e10 if finite[model_method].time / 1e10 < MIN_PROBE_SECONDS else matmul_rate(fm.device, fm.dtype)
    seconds = {m: e.time / rate for m, e in finite.items()}
    best = seconds[model_method]
    candidates = [m for m in seconds if seconds[m] <= RULE_OUT * best]
    close = tuple(sorted((m for m in seconds if m != model_method and seconds[m] <= EXPLORE * best), key=seconds.get))
    if len(candidates) < 2:
        choice = Choice(model_method, model_method, seconds, explore=close,
                        reason=f"cost model: no other method within {RULE_OUT:g}x")
    elif best * scale < MIN_PROBE_SECONDS:
        choice = Choice(model_method, model_method, seconds, explore=close,
                        reason=f"cost model: the call is estimated at {best * scale:.2g} s, too short to probe")
    else:
        choice = _measured(call, finite, seconds, candidates, model_method, rate, scale)
    choice = replace(choice, plan_shape=(call.plan.block, call.plan.n_groups))
    fm.memo.put(key, choice)
    fm.memo.put(("trials",) + key, {})  # times of real calls under another plan do not carry over
    fm.memo.put(("trial_runs",) + key, {})
    return choice


def _runs_as(call, method: str) -> str:
    """`call.resolve(method)` without its warnings (they are for a user who asked for `method`);
    only NTK-vector products can run as another method."""
    if method != "ntk-vp":
        return method
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return call.resolve(method)


def _after_trials(call, key: tuple, cached: Choice) -> Choice:
    """The cached decision, revised by the times of earlier real calls (see `record`)."""
    trials = dict(call.fm.memo.get(("trials",) + key) or {})
    runs = call.fm.memo.get(("trial_runs",) + key) or {}
    base = replace(cached, probe_seconds=0.0, trials=trials, reason=cached.reason + " (cached)")
    pick = cached.method
    if not cached.explore or pick not in trials:
        return base
    for m in cached.explore:
        if m in trials:
            continue
        if _runs_as(call, m) != m:  # a method that would run as another is not a candidate
            record(call, m, math.inf)
            continue
        return replace(base, method=m, trying=True,
                       reason=f"trying {m} on this call: estimated within {EXPLORE:g}x of {pick}, "
                              "which is timed on its real calls")
    fastest = min(trials, key=trials.get)
    if fastest == pick or trials[fastest] * TRIAL_TIE >= trials[pick]:
        return replace(base, reason=f"the cost model's choice, fastest on real calls of this shape (within "
                                    f"{TRIAL_TIE - 1:.0%})")
    # One call of each can be a noisy one: before switching, time both a second time (the
    # fastest of two calls each decides).
    for m in (pick, fastest):
        if runs.get(m, 0) < TRIAL_RUNS:
            return replace(base, method=m, trying=True,
                           reason=f"timing {m} again: {fastest} ran faster than {pick} once")
    return replace(base, method=fastest, reason=f"fastest on real calls of this shape (the cost model picked "
                                                f"{cached.model_method})")


def record(call, method: str, seconds: float) -> None:
    """Keep the time of a real `auto` call of `call`'s shape that ran `method` (the fastest such
    call per method, and how many there were), for `decide(..., explore=True)`."""
    key = _key(call, 1.0)
    trials = dict(call.fm.memo.get(("trials",) + key) or {})
    trials[method] = min(seconds, trials.get(method, math.inf))
    runs = dict(call.fm.memo.get(("trial_runs",) + key) or {})
    runs[method] = runs.get(method, 0) + 1
    call.fm.memo.put(("trials",) + key, trials)
    call.fm.memo.put(("trial_runs",) + key, runs)


def run_auto(call, progress=None) -> torch.Tensor:
    """`call.run` by the method `auto` decides (`decide(call, explore=True)`), its time recorded.
    A method tried for its time that fails (out of memory, an error the cost model's choice
    would not meet) is recorded as unusable, and the call runs the cost model's choice instead."""
    choice = decide(call, explore=True)
    _sync(call.fm.device)
    t = time.perf_counter()
    try:
        out = call.run(choice.method, progress)
    except Exception:  # noqa: BLE001 - only a method being tried: the chosen one's errors are the call's
        if not choice.trying:
            raise
        record(call, choice.method, math.inf)
        return run_auto(call, progress)
    _sync(call.fm.device)
    record(call, choice.method, time.perf_counter() - t)
    return out


def _probe_k(call, finite: dict[str, Estimate], candidates: list[str], budget_s: float, rate: float) -> int:
    """The largest power-of-two probe side whose two probes for all candidates fit `budget_s`."""
    rows_f, pairs_f = _counts(call)
    k, best = 1, 0
    while 2 * k <= _max_k(call):
        k *= 2
        cost = 0.0
        for m in candidates:
            a, b = _parts(finite[m])
            cost += (a * 2 * k / rows_f + b * k * k / pairs_f) / rate  # rows 2k, pairs k²
        if cost > budget_s:
            break
        best = k
    return best


def _measured(call, finite, seconds, candidates, model_method, rate, scale) -> Choice:
    k = _probe_k(call, finite, candidates, PROBE_SHARE * seconds[model_method] * scale, rate)
    if k < MIN_K:
        return Choice(model_method, model_method, seconds,
                      reason="cost model: too few inputs, or a probe would cost more than "
                             f"{PROBE_SHARE:.0%} of the call")
    rows_f, pairs_f = _counts(call)
    t0 = time.perf_counter()
    measured: dict[str, float] = {}
    for m in candidates:
        method = call.resolve(m)
        if method != m:  # NTK-vector products without forward-mode AD: Jacobian contraction anyway
            continue
        time_probe(call, m, 1)  # warm-up: vmap decisions, the analysis, first-use allocations
        per_row, per_pair = time_probe(call, m, k)
        measured[m] = per_row * rows_f + per_pair * pairs_f
    spent = time.perf_counter() - t0
    if not measured:
        return Choice(model_method, model_method, seconds, probe_seconds=spent, reason="no candidate could be probed")
    winner = min(measured, key=measured.get)
    if model_method in measured and measured[winner] * TIE > measured[model_method]:
        winner, why = model_method, f"the cost model's choice, within {TIE - 1:.0%} of the fastest measured"
    else:
        why = "fastest measured" + ("" if winner == model_method else f" (the cost model picked {model_method})")
    return Choice(winner, model_method, seconds, measured, spent, why + f", probes of {k} x {k}")
