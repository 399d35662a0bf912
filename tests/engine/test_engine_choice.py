"""`method="auto"`'s measured choice (`ntkit.engine.choice`): deterministic given the probe
times (injected here, no timing in tests), cached with the plan and invalidated with it, never
probing a call too small to probe; and the sequence-layer mode rule of the cost model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ntkit
from ntkit.engine import cache, choice
from ntkit.engine.call import prepare

D = torch.float64


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 4)).to(D).eval()


@pytest.fixture
def probes(monkeypatch):
    """Every probe is recorded and timed by a formula: t = a·rows + b·pairs per method."""
    calls = []
    rates = {"jacobian": (1e-3, 1e-5), "structured": (1e-3, 4e-5), "ntk-vp": (1e-2, 1e-4)}

    def fake(call, method, k):
        calls.append((method, k))
        return rates[method]

    monkeypatch.setattr(choice, "time_probe", fake)
    monkeypatch.setattr(choice, "MIN_PROBE_SECONDS", 0.0)
    monkeypatch.setattr(choice, "MIN_K", 2)
    monkeypatch.setattr(choice, "PROBE_SHARE", 1e6)
    monkeypatch.setattr(choice, "RULE_OUT", 1e9)
    monkeypatch.setattr(choice, "matmul_rate", lambda device, dtype: 1e9)
    return calls, rates


def test_a_probe_separates_per_sample_and_per_pair_work():
    """One real probe: the engine's steps split its time into rows (per sample) and blocks."""
    model, x = _mlp(), torch.randn(64, 6, dtype=D)
    call = prepare(model, x, None, "full")
    for method in ("jacobian", "structured", "ntk-vp"):
        per_row, per_pair = choice.time_probe(call, method, 8)
        assert per_row >= 0 and per_pair > 0 and (per_row > 0 or method == "ntk-vp")


def test_measured_choice_is_deterministic_given_probe_times(probes):
    calls, rates = probes
    model, x = _mlp(), torch.randn(64, 6, dtype=D)
    cache.clear(model)
    call = prepare(model, x, None, "full")
    picked = choice.decide(call)
    assert picked.measured and set(picked.measured) == {"jacobian", "structured", "ntk-vp"}
    rows, pairs = 64, 64 * 65 / 2
    want = {m: a * rows + b * pairs for m, (a, b) in rates.items()}
    for m, t in picked.measured.items():
        assert t == pytest.approx(want[m])
    fastest = min(want, key=want.get)
    model_pick = picked.model_method
    assert picked.method == (fastest if want[model_pick] > choice.TIE * want[fastest] else model_pick)
    assert calls and {k for _, k in calls} >= {1} and max(k for _, k in calls) >= 2


def test_a_clear_measured_winner_replaces_the_cost_models_choice(probes, monkeypatch):
    calls, rates = probes
    model, x = _mlp(), torch.randn(64, 6, dtype=D)
    cache.clear(model)
    call = prepare(model, x, None, "full")
    model_pick = min(call.estimates(), key=lambda m: call.estimates()[m].time)
    slow = {m: (1.0, 1.0) for m in rates}
    slow["jacobian" if model_pick != "jacobian" else "structured"] = (1e-4, 1e-7)
    rates.update(slow)
    picked = choice.decide(call)
    assert picked.method != model_pick and "cost model picked" in picked.reason


def test_the_decision_is_cached_and_invalidated_with_the_plan(probes):
    calls, _ = probes
    model, x = _mlp(), torch.randn(64, 6, dtype=D)
    cache.clear(model)
    first = choice.decide(prepare(model, x, None, "full"))
    n = len(calls)
    assert n > 0
    again = choice.decide(prepare(model, x, None, "full"))
    assert len(calls) == n and again.method == first.method and again.probe_seconds == 0.0
    with torch.no_grad():
        model[0].weight.mul_(2.0)  # values change: the same structure, still cached
    choice.decide(prepare(model, x, None, "full"))
    assert len(calls) == n
    model[2] = nn.Linear(32, 4).to(D)  # a replaced layer: a new structure, probed again
    choice.decide(prepare(model, x, None, "full"))
    assert len(calls) > n


def test_a_small_call_never_probes(monkeypatch):
    seen = []
    monkeypatch.setattr(choice, "time_probe", lambda *a: seen.append(a) or 0.0)
    model = _mlp()
    cache.clear(model)
    k = ntkit.ntk(model, torch.randn(20, 6, dtype=D))
    assert k.shape == (20, 20, 4, 4) and seen == []
    monkeypatch.setattr(choice, "RULE_OUT", 1e9)  # every method a candidate: only the size keeps it from probing
    cache.clear(model)
    assert "too short to probe" in ntkit.plan(model, torch.randn(20, 6, dtype=D)).decision
    assert seen == []


def test_sequence_layers_with_full_outputs_form_per_sample_gradients():
    """A Linear over 16 positions: its direct full contraction is bound by memory traffic
    (ntkit.rules.contract.DIRECT_PERMUTE_WEIGHT), so the analysis forms per-sample gradients."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, 32), nn.GELU(),
                          nn.Flatten(), nn.Linear(16 * 32, 10)).eval()
    call = prepare(model, torch.randn(64, 16, 8), torch.randn(48, 16, 8), "full")
    modes = {row.params: row.mode for row in call.layers()}
    assert modes["3.weight, 3.bias"] == "grads"


def test_a_model_vmap_cannot_batch_costs_its_per_sample_loop():
    """Once vmap is known to fail on the model, Jacobian rows are charged the per-sample loop
    (cost.LOOP_PENALTY) and NTK-vector products, which would fall back to Jacobian contraction,
    are not a candidate; a call large enough for it finds out before deciding."""
    import warnings

    from ntkit.engine.cost import LOOP_PENALTY
    from zoo import ZOO

    case = next(c for c in ZOO if c.name == "not-vmappable")
    model = case.model()
    x = torch.randn(64, *case.input_shape, dtype=D)
    cache.clear(model)
    call = prepare(model, x, None, "full")
    before = call.estimates()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        call.settle_vmap()
    after = call.estimates()
    assert call.fm.vmappable is False
    assert after["ntk-vp"].time == float("inf")
    assert after["jacobian"].autodiff_flops == before["jacobian"].autodiff_flops
    assert after["jacobian"].cache == pytest.approx(LOOP_PENALTY * before["jacobian"].cache)


def test_vmap_is_settled_only_where_it_can_change_the_choice(monkeypatch):
    """A loop over samples only makes Jacobian rows dearer: a call whose cost-model choice is
    structured derivatives without fallback parameters does not pay the one-sample vmap check
    (a first call's overhead); one whose choice is Jacobian contraction does."""
    monkeypatch.setattr(choice, "SETTLE_VMAP_FLOPS", 0.0)
    wide = nn.Sequential(nn.Linear(6, 256), nn.Tanh(), nn.Linear(256, 4)).to(D).eval()
    cache.clear(wide)
    call = prepare(wide, torch.randn(32, 6, dtype=D), None, "full")
    assert choice.decide(call).method == "structured"
    assert call.fm.vmappable is None

    class Scale(nn.Module):  # no rule: Jacobian contraction's or NTK-VP's cost decides
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Parameter(torch.ones(6, dtype=D))

        def forward(self, x):
            return (x * self.a)[:, :4]

    model = Scale()
    cache.clear(model)
    call = prepare(model, torch.randn(32, 6, dtype=D), None, "trace")
    assert choice.decide(call).method != "structured"
    assert call.fm.vmappable is True


def test_memory_traffic_counts_per_sample_rows_and_gradients():
    """Jacobian contraction moves O'·P bytes-per-item of rows per sample through memory;
    structured derivatives only the per-sample gradients of their "grads" terms (none for a dense
    net, whose terms contract directly), and NTK-vector products none."""
    from ntkit.engine.cost import BYTE_COST

    model, x = _mlp(), torch.randn(40, 6, dtype=D)
    call = prepare(model, x, None, "trace")
    est = call.estimates()
    p = sum(q.numel() for q in model.parameters())
    assert est["jacobian"].traffic == 40 * 4 * p * 8
    assert est["ntk-vp"].traffic == 0.0
    terms = call._analysis(check=False).terms
    assert est["structured"].traffic == 40 * 4 * 8 * sum(t.size for t in terms if t.mode == "grads")
    bare = est["jacobian"].time / est["jacobian"].margin - BYTE_COST * est["jacobian"].traffic
    assert bare == pytest.approx(est["jacobian"].matmul_flops + est["jacobian"].cache * est["jacobian"].autodiff_flops
                                 / 0.25)


def test_the_unchecked_estimate_sees_inputs_broadcast_over_the_batch():
    """Position embeddings looked up with ids of shape (1, T), as transformers do: the cost
    model's unchecked analysis must find the same fallback as the gradient-checked one, or a
    first call's `auto` and a later call's would estimate (and pick) differently."""
    from ntkit.engine.structured_coverage import analyze

    class PosEmb(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pos = nn.Embedding(5, 8)
            self.lin = nn.Linear(8, 3)

        def forward(self, x):
            ids = torch.arange(x.shape[1]).unsqueeze(0)  # (1, T): broadcast over the samples
            return self.lin(x + self.pos(ids)).mean(1)

    torch.manual_seed(0)
    model, x = PosEmb().to(D), torch.randn(16, 5, 8, dtype=D)
    cache.clear(model)
    call = prepare(model, x, None, "trace")
    quick = analyze(call.fm, x, 16, call.spec, True, check=False)
    assert set(quick.fallback) == {"pos.weight"}
    cache.clear(model)
    call = prepare(model, x, None, "trace")
    assert set(analyze(call.fm, x, 16, call.spec, True, check=True).fallback) == set(quick.fallback)


def test_a_default_budget_that_follows_free_memory_does_not_probe_again(probes, monkeypatch):
    """The default budget is a share of free memory, which other processes move: a repeated call
    whose blocks come out the same reuses the decision (it used to probe again whenever the
    budget's bytes changed); one whose blocks change decides again."""
    import ntkit.engine.call as call_mod

    calls, _ = probes
    model, x = _mlp(), torch.randn(64, 6, dtype=D)
    cache.clear(model)
    budget = {"bytes": 4 * 2**30}
    monkeypatch.setattr(call_mod, "parse_memory", lambda memory, device: budget["bytes"])
    first = prepare(model, x, None, "full")
    choice.decide(first)
    n = len(calls)
    budget["bytes"] = 3 * 2**30  # another process allocated; the blocks are the same
    again = prepare(model, x, None, "full")
    assert again.plan.block == first.plan.block and again.plan.budget != first.plan.budget
    assert choice.decide(again).probe_seconds == 0.0 and len(calls) == n
    budget["bytes"] = 40_000  # blocks shrink: another plan, decided again
    tight = prepare(model, x, None, "full")
    assert tight.plan.block < first.plan.block
    choice.decide(tight)
    assert len(calls) > n


@pytest.fixture
def explore_all(monkeypatch):
    """Every finite method counts as close to the cost model's choice, so each is tried."""
    monkeypatch.setattr(choice, "EXPLORE", 1e9)


def test_unprobed_calls_try_each_close_method_once_and_keep_the_fastest(explore_all):
    """Given the times of real calls (injected through `record`), the choice is deterministic:
    the cost model's pick first, then each close method once, then the fastest."""
    model, x = _mlp(), torch.randn(20, 6, dtype=D)
    cache.clear(model)
    call = prepare(model, x, None, "full")
    first = choice.decide(call, explore=True)
    pick, others = first.method, first.explore
    assert not first.measured and pick == first.model_method
    assert set(others) == {"jacobian", "ntk-vp", "structured"} - {pick}
    assert choice.decide(call, explore=True).method == pick  # untimed yet: its own time first
    choice.record(call, pick, 1.0)
    times = dict(zip(others, (0.5, 2.0)))
    for m in others:
        tried = choice.decide(call, explore=True)
        assert tried.method == m and tried.trying
        choice.record(call, m, times[m])
    fastest = min(times, key=times.get)
    for m in (pick, fastest):  # one call each can be noise: both again before switching
        again = choice.decide(call, explore=True)
        assert again.method == m and again.trying and "again" in again.reason
        choice.record(call, m, {pick: 1.0, **times}[m])
    won = choice.decide(call, explore=True)
    assert won.method == fastest and not won.trying and "fastest on real calls" in won.reason
    assert choice.decide(call).method == pick  # the tiles of ntkit.compute do not follow real calls
    choice.record(call, pick, 0.499)  # a faster call of the pick: it is the fastest again
    assert choice.decide(call, explore=True).method == pick


def test_a_tried_method_must_beat_the_choice_by_the_trial_tie(explore_all):
    model, x = _mlp(), torch.randn(20, 6, dtype=D)
    cache.clear(model)
    call = prepare(model, x, None, "trace")
    first = choice.decide(call, explore=True)
    choice.record(call, first.method, 1.0)
    for m in first.explore:
        choice.record(call, m, 1.0 / choice.TRIAL_TIE * 1.001)  # faster, but within the tie
    assert choice.decide(call, explore=True).method == first.method


def test_ntk_calls_try_the_close_methods_and_every_kernel_is_exact(explore_all, monkeypatch):
    """End to end: repeated `ntkit.ntk` calls run the pick, then each other method once, then
    the fastest of them; every call's kernel matches the float64 brute-force reference."""
    import ntkit.engine.call as call_mod
    from ntkit.reference import ntk_reference

    ran = []
    real_run = call_mod.KernelCall.run
    monkeypatch.setattr(call_mod.KernelCall, "run", lambda self, m, p=None: ran.append(m) or real_run(self, m, p))
    model, x = _mlp(), torch.randn(12, 6, dtype=D)
    cache.clear(model)
    ref = ntk_reference(model, x)
    for _ in range(7):
        k = ntkit.ntk(model, x)
        assert ((k - ref).norm() / ref.norm()).item() < 1e-10  # float64: round-off of O(P) sums
    # the pick, each other method once; then the pick for good, or the pick and the challenger
    # once more each and the faster for good
    assert len(set(ran[:3])) == 3 and ran[5] == ran[6]
    plan = ntkit.plan(model, x)
    assert "real calls:" in plan.decision and plan.method == ran[6]


def test_a_tried_method_that_fails_falls_back_to_the_choice(explore_all, monkeypatch):
    """Trying a method for its time must not fail a call the cost model's choice can run."""
    import ntkit.engine.call as call_mod
    from ntkit.reference import ntk_reference

    model, x = _mlp(), torch.randn(12, 6, dtype=D)
    cache.clear(model)
    call = prepare(model, x, None, "trace")
    first = choice.decide(call, explore=True)
    broken = first.explore[0]

    def fail(*a, **k):
        raise RuntimeError("out of something")

    monkeypatch.setitem(call_mod.STRATEGIES, broken, fail)
    ntkit.ntk(model, x, output="trace")  # the pick, timed
    k = ntkit.ntk(model, x, output="trace")  # tries `broken`, which fails: the next one instead
    ref = ntk_reference(model, x).diagonal(dim1=2, dim2=3).sum(-1)
    assert ((k - ref).norm() / ref.norm()).item() < 1e-10
    trials = choice.decide(prepare(model, x, None, "trace"), explore=True).trials
    assert trials[broken] == float("inf") and len(trials) == 3
