"""Vmapped derivatives are checked against reverse mode before they are trusted.

A wrong batching rule (torch's own, e.g. PReLU's under vmap(jacrev) here, or a custom
`autograd.Function`'s) and an operator whose forward-mode derivative is missing give kernels that
are wrong without anything raising. Each test below builds such a model, shows that the
unchecked path is wrong (so the test can fail) and that ntkit's kernel matches the float64
brute-force reference at 1e-10 relative (both are exact up to round-off, ~1e-15 here).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import ntkit
from ntkit.engine import rows_check
from ntkit.engine.call import ForwardADFallbackWarning
from ntkit.engine.functional import FunctionalModel, VmapFallbackWarning
from ntkit.engine.outputs import parse_output
from ntkit.reference import ntk_reference
from zoo import ZOO, reference

TOL = 1e-10


class _WrongSum(torch.autograd.Function):
    """Σ over the leading axis of g·x, whose batching rule averages g over the vmapped axis: right
    for a batch of one, wrong otherwise (a broadcasting bug in miniature)."""

    @staticmethod
    def forward(g, x):
        return (g * x).sum(0)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def vmap(info, in_dims, g, x):
        g = g.movedim(in_dims[0], 0) if in_dims[0] is not None else g.expand(info.batch_size, *g.shape)
        x = x.movedim(in_dims[1], 0) if in_dims[1] is not None else x.expand(info.batch_size, *x.shape)
        return (g.mean(0, keepdim=True) * x).sum(1), 0


class _Scale(torch.autograd.Function):
    """x·w, whose weight gradient goes through `_WrongSum` (and which has no forward-mode rule:
    its JVP raises)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, w):
        return x * w

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return g * w, _WrongSum.apply(g, x)


class WrongRule(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 6)
        self.w = nn.Parameter(torch.randn(6))
        self.b = nn.Linear(6, 3)

    def forward(self, x):
        return self.b(torch.tanh(_Scale.apply(self.a(x), self.w)))


def _rel(k, ref):
    return float((k - ref).abs().max() / ref.abs().max())


@pytest.fixture
def wrong_rule():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return WrongRule().double(), torch.randn(7, 5, dtype=torch.float64)


def test_unchecked_rows_of_a_wrong_batching_rule_are_wrong(wrong_rule, monkeypatch):
    model, x = wrong_rule
    monkeypatch.setattr("ntkit.engine.functional.rows_error", lambda *a, **k: 0.0)
    k = ntkit.ntk(model, x, method="jacobian")
    assert _rel(k, ntk_reference(model, x)) > 1e-3


@pytest.mark.parametrize("method", ["jacobian", "structured", "auto", "ntk-vp"])
def test_wrong_batching_rule_is_caught_and_the_kernel_is_exact(wrong_rule, method):
    model, x = wrong_rule
    with pytest.warns(VmapFallbackWarning, match="wrong batching rule"):
        k = ntkit.ntk(copy.deepcopy(model), x, method=method)
    assert _rel(k, ntk_reference(model, x)) < TOL


def test_one_sample_does_not_settle_vmap(monkeypatch):
    """A batching bug that one sample hides (sample 0 leaks into the others' rows of `0.weight`):
    a batch of one settles nothing, a checked group does not vouch for another."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    real = FunctionalModel._jacobian_rows_vmap

    def leaky(self, names, xb, spec):
        rows = real(self, names, xb, spec)
        if "0.weight" in rows and xb.shape[0] > 1:
            rows["0.weight"] = rows["0.weight"].clone()
            rows["0.weight"][1:] += rows["0.weight"][:1]
        return rows

    monkeypatch.setattr(FunctionalModel, "_jacobian_rows_vmap", leaky)
    fm = FunctionalModel(model, None)
    fm.check_inputs(x, None)
    spec = parse_output("full")
    fm.jacobian_rows(["0.weight"], x[:1], spec)
    assert fm.vmappable is None and not fm.vmap_checked
    fm.jacobian_rows(["2.bias"], x[:3], spec)
    assert fm.vmappable is True and fm.vmap_checked == {"2.bias"}
    with pytest.warns(VmapFallbackWarning, match="wrong batching rule"):
        rows = fm.jacobian_rows(["0.weight"], x, spec)
    assert fm.vmappable is False
    want = torch.stack([torch.func.jacrev(lambda w, xi=xi: model[2](torch.tanh(xi @ w.T + model[0].bias)))(
        model[0].weight.detach()) for xi in x])
    assert float((rows["0.weight"] - want).abs().max()) < 1e-12
    with pytest.warns(VmapFallbackWarning, match="wrong batching rule"):
        k = ntkit.ntk(copy.deepcopy(model), x, method="jacobian")  # a fresh model: checked anew
    assert _rel(k, ntk_reference(model, x)) < TOL


def _mlp(seed: int, act: nn.Module):
    """(fm, x, spec) of a small float64 MLP, planned."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), act, nn.Linear(8, 3)).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    fm = FunctionalModel(model, None)
    fm.check_inputs(x, None)
    return fm, x, parse_output("full")


def test_rows_error_is_round_off_on_right_rows():
    fm, x, spec = _mlp(1, nn.GELU())
    rows = fm.jacobian_rows(fm.names, x, spec)
    assert rows_check.rows_error(fm, fm.names, x, spec, rows) < 1e-13
    rows["0.weight"] = rows["0.weight"].clone()
    rows["0.weight"][1, 2, 0, 0] += 1e-3 * rows["0.weight"].abs().max()  # one entry of sample 1
    assert rows_check.rows_error(fm, fm.names, x, spec, rows) > 1e-5


class _NoForwardRule(nn.Module):
    """A custom operator with a backward but no forward-mode derivative: under torch.func.jvp its
    tangent is silently dropped (checked below), which NTK-vector products must not use."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 2)

    def forward(self, x):
        return self.b(_no_fwd_scale(self.a(x), self.a.bias))


def _scale(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x * w


_OPS: dict[str, object] = {}


def _no_fwd_scale(x, w):
    return _OPS["scale"](x, w)


def _register_scale_op() -> None:
    if "scale" in _OPS:
        return
    op = torch.library.custom_op("ntkit_tests::scale", _scale, mutates_args=())
    op.register_fake(lambda x, w: torch.empty_like(x))

    def setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return g * w, (g * x).sum(0)

    op.register_autograd(backward, setup_context=setup)
    _OPS["scale"] = op


@pytest.mark.skipif(not hasattr(torch.library, "custom_op"), reason="torch.library.custom_op needs torch >= 2.4")
def test_jvp_without_forward_rule_is_caught():
    _register_scale_op()
    torch.manual_seed(2)
    model = _NoForwardRule().double()
    x = torch.randn(6, 4, dtype=torch.float64)
    fm = FunctionalModel(model, None)
    fm.check_inputs(x, None)
    spec = parse_output("full")
    from ntkit.engine.ntk_vector_products import forward_ad_error, jvp_batch

    try:
        err = rows_check.jvp_error(jvp_batch(fm, spec), fm, x[:2], spec)
    except Exception:  # noqa: BLE001 - a torch whose forward AD raises here is also caught
        err = None
    if err is not None:  # this torch drops the tangent silently: the check must see it
        assert err > 1e-3
    assert forward_ad_error(fm, x, spec) is not None
    with pytest.warns(ForwardADFallbackWarning):
        k = ntkit.ntk(model, x, method="ntk-vp")
    assert _rel(k, ntk_reference(model, x)) < TOL


def test_jvp_error_is_round_off_on_a_plain_model():
    fm, x, spec = _mlp(3, nn.Tanh())
    from ntkit.engine.ntk_vector_products import jvp_batch

    assert rows_check.jvp_error(jvp_batch(fm, spec), fm, x[:2], spec) < 1e-13


@pytest.mark.parametrize("checked", [True, False])
def test_loop_checks_its_backward_vmapped_over_outputs(monkeypatch, checked):
    """The per-sample loop (models vmap cannot batch) runs one backward vmapped over the O'
    outputs; a wrong batching rule there (simulated: the first output's row shifted) is caught
    on first use, and the loop goes one backward per output."""
    case = next(c for c in ZOO if c.name == "not-vmappable")
    x1, _ = case.inputs()
    model = case.model()
    grad = torch.autograd.grad

    def skewed(outputs, inputs, grad_outputs=None, **kw):
        got = grad(outputs, inputs, grad_outputs, **kw)
        if kw.get("is_grads_batched"):
            got = tuple(None if g is None else torch.cat([g[:1] + 1.0, g[1:]]) for g in got)
        return got

    monkeypatch.setattr(torch.autograd, "grad", skewed)
    if not checked:
        monkeypatch.setattr("ntkit.engine.functional.rows_error", lambda *a, **k: 0.0)
    with pytest.warns(VmapFallbackWarning):
        k = ntkit.ntk(model, x1, method="jacobian")
    err = _rel(k, reference(case, True, "full"))
    assert (err < TOL) if checked else (err > 1e-3)
