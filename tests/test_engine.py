"""Every method × output × symmetry × parameter selection against the float64 reference.

Tolerance: 1e-8 relative to max|Θ| in float64. Both sides sum the same products in different
orders, so the error is a few ulps times the number of summands (≤ 1e-13 here); 1e-8 leaves room
for badly conditioned sums while still catching any wrong term (a missing parameter, a swapped
logit or a mis-mirrored block changes entries by O(1) relative).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import ntkit
from ntkit.engine.api import ForwardADFallbackWarning
from ntkit.engine.functional import VmapFallbackWarning
from ntkit.reference import ntk_reference, ntk_vp_reference
from zoo import OUTPUTS, RTOL64, ZOO, Case, D, reference, rel_err

METHODS = ["jacobian", "ntk-vp", "auto"]


def run(case: Case, symmetric: bool, **kw) -> torch.Tensor:
    x1, x2 = case.inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VmapFallbackWarning)
        warnings.simplefilter("ignore", ForwardADFallbackWarning)
        return ntkit.ntk(case.model(), x1, None if symmetric else x2, **kw)


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "rect"])
@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", ZOO, ids=[c.name for c in ZOO])
def test_matches_reference(case, method, output, symmetric):
    k = run(case, symmetric, method=method, output=output)
    r = reference(case, symmetric, output)
    assert k.dtype == D
    assert rel_err(k, r) < RTOL64


@pytest.mark.parametrize("method", ["jacobian", "ntk-vp"])
@pytest.mark.parametrize("case", ZOO, ids=[c.name for c in ZOO])
def test_params_selection(case, method):
    for output in ("full", "trace"):
        for symmetric in (True, False):
            k = run(case, symmetric, method=method, output=output, params=case.last)
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
            assert rel_err(run(case, symmetric, method=method, output=output, **kw), r) < RTOL64


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
    """Dense nets go to structured; convolutions to jacobian; dense layers without rules: `full`
    with many logits to ntk-vp, traces to jacobian."""
    from ntkit.engine.api import _Call
    from ntkit.engine.functional import FunctionalModel
    from ntkit.engine.outputs import parse_output

    wide = nn.Sequential(nn.Linear(3, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    no_rule = nn.Sequential(_NoRuleLinear(3, 256), nn.ReLU(), _NoRuleLinear(256, 256), nn.ReLU(),
                            _NoRuleLinear(256, 10))
    conv = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

    def choice(model, x, output):
        return _Call(FunctionalModel(model), x, None, parse_output(output), None, None).choose()

    assert choice(wide, torch.randn(32, 3), "full") == "structured"
    assert choice(wide, torch.randn(32, 3), "trace") == "structured"
    assert choice(no_rule, torch.randn(32, 3), "full") == "ntk-vp"
    assert choice(no_rule, torch.randn(32, 3), "trace") == "jacobian"
    assert choice(conv, torch.randn(16, 3, 32, 32), "full") == "jacobian"


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("method", ["jacobian", "ntk-vp"])
def test_triangular_diagonal_blocks(method, output):
    """N·O large enough that diagonal blocks are split into triangular sub-blocks / chunks."""
    case = Case("mlp-o10-big", ZOO[0].build, (5,), "2.*", n1=41, n2=3)
    k = run(case, True, method=method, output=output, batch_size=41 if method == "jacobian" else None,
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
