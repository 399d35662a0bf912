"""Every method × output × symmetry × parameter selection against the float64 reference.

Tolerance: 1e-8 relative to max|Θ| in float64. Both sides sum the same products in different
orders, so the error is a few ulps times the number of summands (≤ 1e-13 here); 1e-8 leaves room
for badly conditioned sums while still catching any wrong term (a missing parameter, a swapped
logit or a mis-mirrored block changes entries by O(1) relative).
"""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
from torch import nn

import ntkit
from ntkit.engine.functional import VmapFallbackWarning
from ntkit.reference import ntk_reference, ntk_vp_reference
from zoo import OUTPUTS, RTOL64, ZOO, Case, D, reference, rel_err
from helpers.engine import run_case

METHODS = ["jacobian", "ntk-vp", "auto"]


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "rect"])
@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", ZOO, ids=[c.name for c in ZOO])
def test_matches_reference(case, method, output, symmetric):
    k = run_case(case, symmetric, method=method, output=output)
    r = reference(case, symmetric, output)
    assert k.dtype == D
    assert rel_err(k, r) < RTOL64


@pytest.mark.parametrize("method", ["jacobian", "ntk-vp"])
@pytest.mark.parametrize("case", ZOO, ids=[c.name for c in ZOO])
def test_params_selection(case, method):
    for output in ("full", "trace"):
        for symmetric in (True, False):
            k = run_case(case, symmetric, method=method, output=output, params=case.last)
            r = reference(case, symmetric, output, case.last)
            assert rel_err(k, r) < RTOL64
            # a strict subset of the parameters gives a different kernel: the selection matters
            assert rel_err(k, reference(case, symmetric, output)) > 1e-6


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("method", ["jacobian", "ntk-vp"])
@pytest.mark.parametrize("case", [ZOO[0], ZOO[3], ZOO[5]], ids=["mlp", "cnn-bn", "tied"])
def test_blocks_groups_and_mirroring(case, method, output):
    """Blocks of 2 over odd N, tiny budgets forcing one parameter per group and no cache."""
    case = Case(case.name, case.build, case.input_shape, case.last, n1=7, n2=5)
    for symmetric in (True, False):
        r = reference(case, symmetric, output)
        for kw in ({"batch_size": 2}, {"batch_size": 3, "memory": 2_000}, {"memory": 50_000}):
            assert rel_err(run_case(case, symmetric, method=method, output=output, **kw), r) < RTOL64


def test_float32_within_stated_tolerance():
    """float32 kernels agree with float64 to 1e-5 relative (measured ≤ 1e-6 on this zoo)."""
    for case in (ZOO[0], ZOO[3], ZOO[4]):
        x1, x2 = case.inputs()
        model = case.model().float()
        for method in ("jacobian", "ntk-vp"):
            k = ntkit.ntk(model, x1.float(), x2.float(), method=method)
            assert k.dtype == torch.float32
            assert rel_err(k, reference(case, False, "full")) < 1e-5


def test_vmap_fallback_warns_and_is_exact():
    case = next(c for c in ZOO if c.name == "not-vmappable")
    x1, _ = case.inputs()
    with pytest.warns(VmapFallbackWarning, match="cannot transform NotVmappable"):
        k = ntkit.ntk(case.model(), x1, method="ntk-vp")
    assert rel_err(k, reference(case, True, "full")) < RTOL64


def test_symmetric_result_is_exactly_symmetric():
    case = ZOO[3]
    x1, _ = case.inputs()
    k = ntkit.ntk(case.model(), x1, batch_size=2)
    assert torch.equal(k, k.permute(1, 0, 3, 2))


def test_model_is_not_modified():
    case = ZOO[3]
    model = case.model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x1, x2 = case.inputs()
    ntkit.ntk(model, x1, x2, method="jacobian")
    ntkit.ntk(model, x1, method="ntk-vp")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("output", ["full", "diagonal", "trace", "logit:2", "pntk"])
@pytest.mark.parametrize("case", [ZOO[0], ZOO[3], ZOO[1]], ids=["mlp", "cnn-bn", "o1-squeezed"])
def test_ntk_vp_matches_dense_kernel(case, output):
    x1, x2 = case.inputs()
    model = case.model()
    n_logits = model(x1[:1]).reshape(1, -1).shape[1]
    if output == "logit:2" and n_logits < 3:
        output = "logit:0"
    g = torch.Generator().manual_seed(3)
    per_logit = output in ("full", "diagonal")
    shape = (x2.shape[0], n_logits) if per_logit else (x2.shape[0],)
    for extra in ((), (2,)):
        v = torch.randn(*shape, *extra, dtype=D, generator=g)
        got = ntkit.ntk_vp(model, x1, x2, v, output=output, batch_size=2)
        want = ntk_vp_reference(model, x1, x2, v, output)
        assert rel_err(got, want) < RTOL64


def test_ntk_vp_squeezed_o1_vector():
    case = ZOO[1]
    x1, x2 = case.inputs()
    v = torch.randn(x2.shape[0], dtype=D)
    got = ntkit.ntk_vp(case.model(), x1, x2, v)
    assert got.shape == (x1.shape[0],)
    assert rel_err(got, ntk_reference(case.model(), x1, x2, "full")[:, :, 0, 0] @ v) < RTOL64


def test_ntk_fn_reads_current_weights():
    case = ZOO[0]
    model = case.model()
    fn = ntkit.ntk_fn(model, output="trace", method="jacobian")
    x1, x2 = case.inputs()
    k0 = fn(x1, x2)
    assert rel_err(k0, reference(case, False, "trace")) < RTOL64
    with torch.no_grad():
        model[0].weight.mul_(2.0)
    assert rel_err(fn(x1, x2), ntk_reference(model, x1, x2, "trace")) < RTOL64
    assert rel_err(fn(x1), ntk_reference(model, x1, None, "trace")) < RTOL64


def test_train_mode_without_interaction_is_allowed():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(D).train()
    x = torch.randn(4, 3, dtype=D)
    assert rel_err(ntkit.ntk(model, x), ntk_reference(model, x)) < RTOL64


class _NoRuleLinear(nn.Linear):
    """A Linear whose overridden forward has no structured-derivative rule."""

    def forward(self, x):
        return super().forward(x)


def test_auto_follows_the_cost_model():
    """Dense nets and (on CPU) convolution nets go to structured; dense layers without rules:
    `full` with many logits to ntk-vp, traces to jacobian."""
    from ntkit.engine.call import KernelCall
    from ntkit.engine.functional import FunctionalModel
    from ntkit.engine.outputs import parse_output

    wide = nn.Sequential(nn.Linear(3, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    no_rule = nn.Sequential(_NoRuleLinear(3, 256), nn.ReLU(), _NoRuleLinear(256, 256), nn.ReLU(),
                            _NoRuleLinear(256, 10))
    conv = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

    def choice(model, x, output):
        return KernelCall(FunctionalModel(model), x, None, parse_output(output), None, None).choose()

    for output in ("full", "trace", "diagonal", "logit:3", "pntk"):
        assert choice(wide, torch.randn(32, 3), output) == "structured"
    for output in ("full", "trace", "diagonal"):
        assert choice(conv, torch.randn(16, 3, 32, 32), output) == "structured"
    for output in ("logit:3", "pntk"):  # one output: a close call either way (benchmarks/cost_model.py)
        est = KernelCall(FunctionalModel(conv), torch.randn(16, 3, 32, 32), None, parse_output(output), None,
                    None).estimates()
        assert 0.8 < est["structured"].time / est["jacobian"].time < 1.25
    assert choice(no_rule, torch.randn(32, 3), "full") == "ntk-vp"
    assert choice(no_rule, torch.randn(32, 3), "trace") == "jacobian"


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("method", ["jacobian", "ntk-vp"])
def test_triangular_diagonal_blocks(method, output):
    """N·O large enough that diagonal blocks are split into triangular sub-blocks / chunks."""
    case = Case("mlp-o10-big", ZOO[0].build, (5,), "2.*", n1=41, n2=3)
    k = run_case(case, True, method=method, output=output, batch_size=41 if method == "jacobian" else None,
            memory=None if method == "jacobian" else 400_000)
    assert rel_err(k, reference(case, True, output)) < RTOL64


def test_in_place_buffer_updates_do_not_reach_the_model():
    case = next(c for c in ZOO if c.name == "stateful")
    model = case.model()
    x1, x2 = case.inputs()
    for method in ("jacobian", "ntk-vp"):
        ntkit.ntk(model, x1, x2, method=method)
    assert float(model.calls) == 0.0


def test_same_tensor_twice_is_symmetric():
    case = ZOO[3]
    x1, _ = case.inputs()
    k = ntkit.ntk(case.model(), x1, x1, batch_size=2)
    assert torch.equal(k, k.permute(1, 0, 3, 2))
    assert rel_err(k, reference(case, True, "full")) < RTOL64


def test_plan_explains_methods_and_layers():
    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x * self.a

    net = nn.Sequential(Scale(), nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 4))
    p = ntkit.plan(net, torch.randn(8, 3), output="trace")
    assert set(p.estimates) == {"jacobian", "ntk-vp", "structured"}
    assert p.method == min(p.estimates, key=p.estimates.get)
    by_name = {c.params: c for c in p.layers}
    assert by_name["1.weight, 1.bias"].mode in ("direct", "grads") and by_name["1.weight, 1.bias"].size == 64
    assert by_name["0.a"].reason == "unknown layer type Scale"
    text = str(p)
    assert "<- chosen" in text and "0.a [3] fallback to jacobian (unknown layer type Scale)" in text


# ------------------------------------------------------------------------------------ plan cache
def _spy(monkeypatch, owner, name):
    """Count the calls of owner.name (still calling it)."""
    calls = []
    real = getattr(owner, name)

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(owner, name, spy)
    return calls


def test_plan_cache_replans_only_when_the_structure_changes(monkeypatch):
    """Repeated calls on one model and shape do not profile or gradient-check again; new values
    are read at every call; a new width, a frozen parameter or train mode start a fresh plan."""
    import ntkit.engine.structured_coverage as structured_mod
    from ntkit.engine.functional import FunctionalModel

    probes = _spy(monkeypatch, FunctionalModel, "_profiled_call")
    checks = _spy(monkeypatch, structured_mod, "_check")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(D).eval()
    x = torch.randn(5, 4, dtype=D)
    for method in ("structured", "auto", "jacobian", "structured"):
        assert rel_err(ntkit.ntk(model, x, method=method), ntk_reference(model, x)) < RTOL64
    assert (len(probes), len(checks)) == (1, 1)
    with torch.no_grad():  # new values, same structure: no new plan, the new kernel
        model[0].weight.mul_(-2.0)
    assert rel_err(ntkit.ntk(model, x, method="structured"), ntk_reference(model, x)) < RTOL64
    fn = ntkit.ntk_fn(model, method="structured")
    xs = torch.randn(3, 4, dtype=D)
    assert rel_err(fn(xs, x), ntk_reference(model, xs, x)) < RTOL64
    assert (len(probes), len(checks)) == (1, 1)  # another N: terms redone, coverage reused
    assert rel_err(ntkit.ntk(model, x, method="structured", output="trace"), ntk_reference(model, x, None, "trace")) < RTOL64
    assert (len(probes), len(checks)) == (1, 2)  # another output: checked once more
    model[2] = nn.Linear(6, 2).to(D)  # a new layer (and O)
    assert rel_err(ntkit.ntk(model, x, method="structured"), ntk_reference(model, x)) < RTOL64
    assert (len(probes), len(checks)) == (2, 3)
    model[0].bias.requires_grad_(False)
    assert rel_err(ntkit.ntk(model, x, method="structured"), ntk_reference(model, x)) < RTOL64
    assert len(probes) == 3
    model.train()
    assert rel_err(ntkit.ntk(model, x, method="structured"), ntk_reference(model, x)) < RTOL64
    assert len(probes) == 4
    x3 = torch.randn(5, 3, dtype=D)  # another input shape is another entry (here: an error)
    with pytest.raises(ValueError, match="rejected inputs of shape"):
        ntkit.ntk(model, x3)


def test_plan_cache_follows_the_parameter_selection_and_rule_registry(monkeypatch):
    import ntkit.engine.structured_coverage as structured_mod
    from ntkit.engine.structured import StructuredFallbackWarning
    from ntkit.rules import GradFactor, Rule, register_rule
    from ntkit.rules.registry import RULES

    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Parameter(torch.linspace(0.5, 1.5, 4, dtype=D))

        def forward(self, x):
            return x * self.a

    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), Scale(), nn.Tanh(), nn.Linear(4, 2)).to(D).eval()
    x = torch.randn(6, 3, dtype=D)
    with pytest.warns(StructuredFallbackWarning, match="unknown layer type Scale"):
        k = ntkit.ntk(model, x, method="structured")
    assert rel_err(k, ntk_reference(model, x)) < RTOL64
    k = ntkit.ntk(model, x, method="structured", params="3.*")  # another selection, own entry
    assert rel_err(k, ntk_reference(model, x, params="3.*")) < RTOL64
    checks = _spy(monkeypatch, structured_mod, "_check")

    @register_rule(Scale)
    class ScaleRule(Rule):
        params = ("a",)

        def factors(self, module, x, cots, names):
            return {"a": GradFactor(cots[0] * x, module.a.shape)}

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", StructuredFallbackWarning)  # the new rule is used
            k = ntkit.ntk(model, x, method="structured")
        assert rel_err(k, ntk_reference(model, x)) < RTOL64 and len(checks) == 1
    finally:
        del RULES[Scale]


def test_plan_cache_keeps_no_model_alive():
    """The cache holds models weakly and its entries refer to layers by name: a model (even one
    that is itself the only layer) is freed when the user drops it."""
    import gc
    import weakref

    from ntkit.engine import cache

    refs = []
    for model in (nn.Linear(3, 2).to(D), nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(D)):
        x = torch.randn(4, 3, dtype=D)
        for method in ("auto", "structured", "ntk-vp"):
            ntkit.ntk(model, x, method=method)
        ntkit.plan(model, x)
        assert model in cache._MODELS
        refs.append(weakref.ref(model))
    del model
    gc.collect()
    assert all(r() is None for r in refs)


def test_plan_cache_is_bounded():
    from ntkit.engine import cache

    model = nn.Sequential(nn.Linear(3, 2)).to(D)
    for n in range(1, cache.MAX_ENTRIES + 10):
        ntkit.ntk(model, torch.randn(n, 3, dtype=D), method="structured", output="trace")
    assert len(cache._MODELS[model][1]) <= cache.MAX_ENTRIES


def test_fingerprint_sees_layer_settings_not_values():
    from ntkit.engine.cache import fingerprint

    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU())
    fp = fingerprint(net)
    with torch.no_grad():
        net[0].weight.add_(1.0)
    net[0].load_state_dict(net[0].state_dict())
    assert fingerprint(net) == fp
    net[0].stride = (2, 2)
    assert fingerprint(net) != fp
    net[0].stride = (1, 1)
    assert fingerprint(net) == fp
    handle = net.register_forward_hook(lambda m, i, o: o * 2)
    assert fingerprint(net) != fp
    handle.remove()
    net[0].weight = nn.Parameter(net[0].weight.detach().clone())
    assert fingerprint(net) != fp


# ------------------------------------------------------------------------------------ cost model
def _synthetic(layers, n, o_logits, output, symmetric=True, rows_batch=0, peak=0, cache=None):
    """Estimates for a network given as layers (in, out, S positions) with biases: F, P and the
    structured analysis (each layer in the cheaper of the direct and per-sample-gradient modes)
    from the formulas documented in ntkit.engine.cost and ntkit.rules.contract."""
    from ntkit.engine.cost import StructuredCost, estimate
    from ntkit.engine.memory import Plan
    from ntkit.engine.outputs import parse_output
    from ntkit.rules.contract import formation_weight

    spec = parse_output(output).resolve(o_logits)
    o = spec.n_out(o_logits)
    of = o if spec.kind == "full" else 1
    pairs = n * n * (0.5 if symmetric else 1.0)
    sides = n * (1 if symmetric else 2)
    flops = sum(2.0 * s * i * out for i, out, s in layers)
    n_params = sum(i * out + out for i, out, _ in layers)
    matmul = formation = form_time = 0.0
    for i, out, s in layers:
        k = 2.0 * s * s * i + s * s  # K = x1·x2 + 1 over position pairs
        if s == 1:
            direct = k + (2.0 * o * o * out if spec.kind == "full" else 2.0 * o * out)
        else:
            direct = k + 2.0 * s * s * o * out + (2.0 * s * o * o * out if spec.kind == "full" else 0.0)
        f = sides * 2.0 * o * s * out * i
        grads = (pairs * 2.0 * o * of * (i * out + out), f, f * formation_weight(o * out))
        if pairs * direct <= grads[0] + grads[2]:
            matmul += pairs * direct
        else:
            matmul, formation, form_time = matmul + grads[0], formation + grads[1], form_time + grads[2]
    plan = Plan(block=n, groups=(("all",),), chunk=n, budget=1 << 30, rows_batch=rows_batch)
    sc = StructuredCost(matmul_flops=matmul, formation_flops=formation, fallback_params=0, fallback_groups=0,
                        covered=True, formation_time=form_time, per_output=True)
    kw = {"n1": n, "n2": n, "symmetric": symmetric, "n_logits": o_logits, "spec": spec, "n_params": n_params,
          "flops": flops, "plan": plan, "peak": peak, "itemsize": 4, "cache_bytes": cache}
    return {m: estimate(m, **kw, structured=sc if m == "structured" else None) for m in ("jacobian", "ntk-vp", "structured")}


def _pick(est):
    return min(est, key=lambda m: est[m].time)


def test_cost_model_decisions_on_synthetic_layers():
    """Dense nets: structured by far; convolutions on large images: Jacobian contraction (the
    same per-sample gradients, formed at a lower rate); wide convolutions on tiny images, where
    the contraction dominates: structured; one output: Jacobian contraction."""
    mlp = [(3, 1024, 1)] + [(1024, 1024, 1)] * 8 + [(1024, 10, 1)]
    for output in ("full", "trace", "diagonal", "logit:0", "pntk"):
        est = _synthetic(mlp, 64, 10, output)
        assert _pick(est) == "structured"
        assert est["structured"].time * (20 if output == "full" else 5) < est["jacobian"].time
    cnn = [(27, 32, 1024), (288, 32, 1024), (288, 32, 1024), (32, 10, 1)]  # W2-CNN
    for output in ("full", "trace", "diagonal", "logit:0", "pntk"):
        est = _synthetic(cnn, 32, 10, output)
        assert _pick(est) == "jacobian"
        assert 1.2 < est["structured"].time / est["jacobian"].time < 2.5
    # 128 channels on 8 x 8 images: the contraction dominates, and with 64 positions the
    # direct mode never forms the per-sample gradients (measured 0.5x Jacobian contraction's time)
    wide = [(27, 128, 64), (1152, 128, 64), (128, 10, 1)]
    assert _pick(_synthetic(wide, 16, 10, "full")) == "structured"


def test_formation_rate_and_cache_penalty():
    from ntkit.engine.cost import CACHE_EXPONENT, cache_penalty
    from ntkit.rules.contract import FORMATION_ROWS, FORMATION_WEIGHT, formation_weight

    assert formation_weight(FORMATION_ROWS) == formation_weight(10 * FORMATION_ROWS) == FORMATION_WEIGHT
    assert formation_weight(FORMATION_ROWS // 2) == pytest.approx(2 * FORMATION_WEIGHT)
    assert cache_penalty(100, None) == cache_penalty(100, 100) == 1.0
    assert cache_penalty(800, 100) == pytest.approx(8**CACHE_EXPONENT)
    # Jacobian passes split to fit the cache pay nothing; a whole block of a huge layer pays on CPU
    # only, and only on its autodiff part.
    cnn = [(27, 32, 1024), (288, 32, 1024), (32, 10, 1)]
    peak, cache = 32 * 1024, 8 << 20
    fits = _synthetic(cnn, 32, 10, "full", rows_batch=4, peak=peak, cache=cache)["jacobian"]
    whole = _synthetic(cnn, 32, 10, "full", rows_batch=0, peak=peak, cache=cache)["jacobian"]
    gpu = _synthetic(cnn, 32, 10, "full", rows_batch=0, peak=peak, cache=None)["jacobian"]
    assert fits.cache == gpu.cache == 1.0 and fits.time == gpu.time
    assert whole.cache == pytest.approx((32 * 10 * peak * 4 / cache) ** CACHE_EXPONENT)
    assert whole.time - fits.time == pytest.approx((whole.cache - 1) * fits.autodiff_flops / 0.25)


def test_structured_without_rules_costs_what_jacobian_contraction_does():
    from ntkit.engine.cost import STRUCTURED_MARGIN, StructuredCost, estimate
    from ntkit.engine.memory import Plan
    from ntkit.engine.outputs import parse_output

    plan = Plan(block=8, groups=(("a",), ("b",)), chunk=8, budget=1 << 30)
    kw = {"n1": 8, "n2": 5, "symmetric": False, "n_logits": 3, "spec": parse_output("trace"), "n_params": 1000,
          "flops": 5e4, "plan": plan}
    sc = StructuredCost(matmul_flops=0.0, formation_flops=0.0, fallback_params=1000, fallback_groups=2,
                        covered=False, formation_time=0.0)
    s, j = estimate("structured", **kw, structured=sc), estimate("jacobian", **kw)
    assert s.time == pytest.approx(j.time * STRUCTURED_MARGIN)
    assert estimate("structured", **kw).time == float("inf")  # no analysis: never chosen


def test_rows_batch_keeps_vmapped_passes_in_cache():
    from ntkit.engine.memory import make_plan

    kw = {"names": ["w"], "sizes": {"w": 1000}, "n_max": 64, "n_out": 10, "activations": 50_000, "itemsize": 4,
          "budget": 1 << 30}
    for peak, cache in ((32_768, 8 << 20), (4096, 1 << 20), (10**6, 1 << 20)):
        plan = make_plan(**kw, peak=peak, cache_bytes=cache)
        assert 1 <= plan.rows_batch < plan.block
        assert plan.rows_batch * 10 * peak * 4 <= cache or plan.rows_batch == 1
        assert plan.rows_batch == 1 or (plan.rows_batch + 1) * 10 * peak * 4 > cache
        parts = plan.rows_slices(plan.block)
        assert parts[0].start == 0 and parts[-1].stop == plan.block
        assert all(a.stop == b.start for a, b in itertools.pairwise(parts))
    assert make_plan(**kw, peak=100, cache_bytes=8 << 20).rows_batch == 0  # all fits: one pass
    assert make_plan(**kw, peak=32_768, cache_bytes=None).rows_batch == 0  # GPU: one pass
    # the user's block is split the same way (6 samples of 10 x 32768 floats fit in 8 MiB)
    assert make_plan(**kw, peak=32_768, cache_bytes=8 << 20, batch_size=16).rows_batch == 6
    assert make_plan(**kw, peak=32_768, cache_bytes=8 << 20, batch_size=6).rows_batch == 0


def test_jacobian_blocks_bounded_by_rows_not_by_activations_when_passes_are_split():
    """On CPU Jacobian contraction runs `rows_batch` samples per vmapped pass, so under a budget
    its block is bounded by the Jacobian rows only; NTK-vector products keep the activation bound."""
    from ntkit.engine.memory import ACTIVATION_COPIES, make_plan

    kw = {"names": ["w"], "sizes": {"w": 10_000}, "n_max": 400, "n_out": 10, "activations": 200_000,
          "itemsize": 4, "budget": 500 << 20, "peak": 32_768, "cache_bytes": 4 << 20}
    shared = make_plan(**kw)
    jac = make_plan(**kw, split_passes=True)
    assert shared.block * 40 * 200_000 * ACTIVATION_COPIES <= (500 << 20) // 4 < (shared.block + 1) * 40 * 200_000 * 4
    assert jac.block == min(400, ((500 << 20) // 4) // (40 * 10_000))  # a row and a column block of the largest parameter
    assert 1 <= jac.rows_batch < jac.block and jac.rows_batch * 40 * 32_768 <= 4 << 20
    # the passes' activations stay in a quarter of the budget (one sample at least)
    assert jac.rows_batch * 40 * 200_000 * ACTIVATION_COPIES <= (500 << 20) // 4
    assert make_plan(**{**kw, "activations": 2_000_000}, split_passes=True).rows_batch == 1
    assert make_plan(**{**kw, "cache_bytes": None}, split_passes=True).block == shared.block  # GPU: one pass


@pytest.mark.parametrize("output", ["full", "diagonal", "pntk"])
def test_jacobian_rows_in_cache_sized_passes_match_reference(monkeypatch, output):
    """A tiny cache budget splits every block into one-sample passes: same kernel."""
    from ntkit.engine import call as engine_call

    monkeypatch.setattr(engine_call, "CACHE_BYTES", 1)
    case = Case(ZOO[3].name, ZOO[3].build, ZOO[3].input_shape, ZOO[3].last, n1=7, n2=5)
    call = engine_call.prepare(case.model(), *case.inputs(), output, None, None, None, None)
    assert call.plan.rows_batch == 1
    for symmetric in (True, False):
        for kw in ({}, {"batch_size": 3}):
            k = run_case(case, symmetric, method="jacobian", output=output, **kw)
            assert rel_err(k, reference(case, symmetric, output)) < RTOL64
