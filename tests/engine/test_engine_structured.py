"""method="structured" against the float64 reference: the zoo, the contraction modes and
blocks, fallbacks for layers without a rule, and how auto plans it.

Tolerance as in test_engine: 1e-8 relative to max|Θ| in float64. The per-layer rules themselves
(each layer family as settings, user rules and `check_rule`) are checked in tests/rules/.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from zoo import OUTPUTS, RTOL64, ZOO, Case, D, reference, rel_err

import ntkit
from ntkit.engine.structured import StructuredFallbackWarning
from ntkit.reference import ntk_reference
from ntkit.rules import contract
from ntkit.rules import conv as conv_rules
from helpers.engine import Custom, engine_ntk, run_case


def run(case: Case, symmetric: bool, **kw) -> torch.Tensor:
    return run_case(case, symmetric, method="structured", **kw)


# ------------------------------------------------------------------------------------------- zoo
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "rect"])
@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("case", ZOO, ids=[c.name for c in ZOO])
def test_zoo_matches_reference(case, output, symmetric):
    k = run(case, symmetric, output=output)
    assert k.dtype == D
    assert rel_err(k, reference(case, symmetric, output)) < RTOL64


@pytest.mark.parametrize("case", ZOO, ids=[c.name for c in ZOO])
def test_zoo_params_selection(case):
    for output in ("full", "trace"):
        for symmetric in (True, False):
            k = run(case, symmetric, output=output, params=case.last)
            assert rel_err(k, reference(case, symmetric, output, case.last)) < RTOL64


@pytest.mark.parametrize("mode", ["direct", "grads"])
@pytest.mark.parametrize("case", [c for c in ZOO if c.name in ("mlp-o10", "tied", "attention", "convzoo", "cnn-bn")],
                         ids=lambda c: c.name)
def test_both_contraction_modes_blocks_and_triangles(case, mode, monkeypatch):
    """Force one mode for every Linear-type term; blocks of 2 over odd N; tiny memory budgets."""
    monkeypatch.setattr(contract.LinearTerm, "direct_flops",
                        (lambda self, kind: 0.0 if self.groups == 1 else float("inf")) if mode == "direct"
                        else (lambda self, kind: float("inf")))
    case = Case(case.name, case.build, case.input_shape, case.last, case.tokens, n1=7, n2=5)
    for output in ("full", "trace", "diagonal", "pntk"):
        for symmetric in (True, False):
            r = reference(case, symmetric, output)
            budgets = [{"batch_size": 3, "memory": 2_000}, {"memory": 30_000}] if output == "full" else []
            for kw in [{}, {"batch_size": 2}, *budgets]:
                assert rel_err(run(case, symmetric, output=output, **kw), r) < RTOL64, (output, symmetric, kw)


def test_blocks_bounded_by_activations_not_parameter_rows():
    """Dense layers form no per-sample gradients: a budget that limits Jacobian contraction to blocks
    of 1-2 samples still lets structured derivatives take all 12 at once, exactly."""
    from ntkit.engine.call import prepare
    from ntkit.engine.structured import structured_plan

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 4)).to(D)
    x = torch.randn(12, 3, dtype=D)
    call = prepare(model, x, None, "full", None, None, None, 8_000_000)
    sp = structured_plan(call.fm, call.x1, call.n2, call.spec, call.symmetric, call.plan, call.profile.activations)
    assert call.plan.block <= 2 and sp.block == 12
    k = engine_ntk(model, x, method="structured", memory=8_000_000)  # the engine planner: under its minimum
    assert rel_err(k, ntk_reference(model, x)) < RTOL64


@pytest.mark.parametrize("output", OUTPUTS)
def test_triangular_diagonal_blocks(output):
    """N·O large enough that the diagonal block is split into triangular chunks."""
    case = Case("mlp-o10-big", ZOO[0].build, (5,), "2.*", n1=41, n2=3)
    assert rel_err(run(case, True, output=output), reference(case, True, output)) < RTOL64
    assert rel_err(run(case, True, output=output, batch_size=15), reference(case, True, output)) < RTOL64


def test_symmetric_result_is_exactly_symmetric_and_model_untouched():
    case = next(c for c in ZOO if c.name == "attention")
    model = case.model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x1, _ = case.inputs()
    k = run(case, True, batch_size=2)
    assert torch.equal(k, k.permute(1, 0, 3, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ntkit.ntk(model, x1, method="structured")
    assert all(torch.equal(before[n], v) for n, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    for m in model.modules():  # no hook or replaced forward left behind
        assert not m._forward_hooks and "forward" not in m.__dict__


def test_float32_within_stated_tolerance():
    for case in (ZOO[0], ZOO[3], ZOO[4]):
        x1, x2 = case.inputs()
        k = ntkit.ntk(case.model().float(), x1.float(), x2.float(), method="structured")
        assert k.dtype == torch.float32
        assert rel_err(k, reference(case, False, "full")) < 1e-5


# ------------------------------------------------------------------------------------- fallbacks
class OutsideUse(nn.Module):
    """fc1's weight is also used directly in forward, outside fc1."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 4)
        self.fc2 = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.tanh(self.fc1(x)) + 0.3 * x @ self.fc1.weight.T
        return self.fc2(h)


X1 = torch.randn(5, 4, dtype=D, generator=torch.Generator().manual_seed(2))
X2 = torch.randn(3, 4, dtype=D, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("output", ["full", "trace", "diagonal"])
def test_unknown_layer_warns_once_naming_its_parameters_and_is_exact(output):
    model = Custom().to(D)
    with pytest.warns(StructuredFallbackWarning) as record:
        k = ntkit.ntk(model, X1, X2, method="structured", output=output)
    msgs = [str(w.message) for w in record if issubclass(w.category, StructuredFallbackWarning)]
    assert msgs == [("unknown layer type Scale in structured mode: falling back to Jacobian contraction "
                     "for parameters scale.alpha, scale.beta")]
    assert rel_err(k, ntk_reference(model, X1, X2, output)) < RTOL64
    # only selected parameters count: no rule needed when the unknown layer is not selected
    with warnings.catch_warnings():
        warnings.simplefilter("error", StructuredFallbackWarning)
        k = ntkit.ntk(model, X1, method="structured", output=output, params=["fc1.*", "fc2.weight"])
    assert rel_err(k, ntk_reference(model, X1, None, output, ["fc1.*", "fc2.weight"])) < RTOL64


def test_progress_counts_fallback_steps_and_ntk_fn():
    model = Custom().to(D)
    x = torch.randn(9, 4, dtype=D)
    steps = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StructuredFallbackWarning)
        ntkit.ntk(model, x, method="structured", batch_size=4, progress=lambda d, t: steps.append((d, t)))
        fn = ntkit.ntk_fn(model, method="structured", output="trace")
        assert rel_err(fn(x, X2), ntk_reference(model, x, X2, "trace")) < RTOL64
    total = steps[0][1]
    assert steps[0] == (0, total) and steps[-1] == (total, total)
    assert [d for d, _ in steps] == list(range(total + 1))


def test_parameter_used_outside_its_layer_falls_back():
    model = OutsideUse().to(D)
    with pytest.warns(StructuredFallbackWarning, match=r"used outside its layer.*parameters fc1\.weight$"):
        k = ntkit.ntk(model, X1, X2, method="structured")
    assert rel_err(k, ntk_reference(model, X1, X2)) < RTOL64


class Unused(nn.Module):
    """One Linear registered under two names (called twice), one never called."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = self.a
        self.spare = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.b(torch.tanh(self.a(x)))))


def test_module_under_two_names_and_unused_layer():
    model = Unused().to(D)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StructuredFallbackWarning)
        for output in ("full", "trace", "diagonal"):
            for x2 in (None, X2):
                k = ntkit.ntk(model, X1, x2, method="structured", output=output)
                assert rel_err(k, ntk_reference(model, X1, x2, output)) < RTOL64


def test_batchnorm_eval_with_frozen_parameters():
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5, affine=True, track_running_stats=True), nn.Tanh(),
                          nn.Linear(5, 2)).to(D).eval()
    model[1].running_var.fill_(1.7)
    model[0].weight.requires_grad_(False)  # frozen parameters never enter
    with warnings.catch_warnings():
        warnings.simplefilter("error", StructuredFallbackWarning)
        k = ntkit.ntk(model, X1, X2, method="structured", output="trace")
    assert rel_err(k, ntk_reference(model, X1, X2, "trace")) < RTOL64


def test_batch_statistics_fall_back():
    """A layer that mixes samples in eval mode (no running statistics) cannot be captured batched."""
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.BatchNorm1d(3, track_running_stats=False), nn.Tanh(),
                          nn.Flatten(), nn.Linear(9, 2)).to(D).eval()
    x = torch.randn(6, 2, 5, dtype=D)
    with pytest.warns(StructuredFallbackWarning, match="depend on the other samples") as record:
        k = ntkit.ntk(model, x, method="structured")
    assert "0.weight" in str(record[0].message)
    assert torch.allclose(k, ntkit.ntk(model, x, method="jacobian"), rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------------- auto
def test_auto_chooses_structured_for_dense_nets_and_plans_show_it():
    torch.manual_seed(0)
    wide = nn.Sequential(nn.Linear(3, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    x = torch.randn(32, 3)
    for output in ("full", "trace"):
        p = ntkit.plan(wide, x, output=output)
        assert p.method == "structured", str(p)
        assert "structured" in str(p)
    assert "structured" in ntkit.METHODS


def test_kept_sides_hold_gradients_only_so_more_of_them_are_cached(monkeypatch):
    """A symmetric kernel in 4 blocks under a budget that holds the blocks' per-sample gradients
    but not their cotangents: each block is captured once (4 captures, not 4 + 6 column
    recomputations), and the kernel matches the reference."""
    import ntkit.engine.structured_coverage as engine_coverage
    import ntkit.engine.structured_side as engine_structured

    monkeypatch.setattr(conv_rules, "CONV_BACKWARD_MIN_IN", 0)
    case = next(c for c in ZOO if c.name == "convzoo")
    model = case.model()
    captures = []
    orig = engine_structured.capture

    def counted(*a, **kw):
        captures.append(1)
        return orig(*a, **kw)

    monkeypatch.setattr(engine_structured, "capture", counted)  # the sides
    monkeypatch.setattr(engine_coverage, "capture", counted)  # the check's capture, reused as the first block
    x = torch.randn(12, *case.input_shape, generator=torch.Generator().manual_seed(3), dtype=D)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StructuredFallbackWarning)
        k = engine_ntk(model, x, output="full", method="structured", batch_size=3, memory="600KB")
    assert len(captures) == 4
    assert rel_err(k, ntk_reference(model, x, None, "full")) < RTOL64


def test_structured_blocks_are_sized_by_their_own_memory():
    """Per-output capture holds O' cotangents per layer output and one backward's activations, not
    the O'·activations of a vmapped Jacobian pass: its blocks are larger under the same budget."""
    from ntkit.engine.call import prepare
    from ntkit.engine.structured import structured_plan

    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    x = torch.randn(200, 3, 16, 16)
    call = prepare(model, x, None, "trace", None, None, None, "20MB")
    sp = structured_plan(call.fm, x, 200, call.spec, True, call.plan, call.profile.activations)
    assert sp.block >= 2 * call.plan.block


def test_a_parameter_with_a_vanishing_gradient_keeps_its_rule():
    """A token-mixing bias that the next LayerNorm removes (constant along the normalized axis)
    has a true gradient of rounding noise; the rule check compares it at the scale of the other
    gradients, so it is not sent to Jacobian contraction for a rounding-noise mismatch."""
    class TokenMix(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = torch.nn.Linear(6, 6)
            self.ln = torch.nn.LayerNorm(5)
            self.head = torch.nn.Linear(5, 3)

        def forward(self, x):  # x: (N, 6 tokens, 5 channels)
            return self.head(self.ln(self.tok(x.transpose(1, 2)).transpose(1, 2)).mean(1))

    torch.manual_seed(0)
    model = TokenMix().to(D).eval()
    x = torch.randn(4, 6, 5, dtype=D)
    from ntkit.engine.call import prepare

    assert [row.params for row in prepare(model, x, None, "trace").layers() if row.reason] == []
    from ntkit.reference import ntk_reference

    assert rel_err(ntkit.ntk(model, x, method="structured", output="trace"), ntk_reference(model, x, output="trace")) <= RTOL64
