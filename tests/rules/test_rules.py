"""The per-layer structured-derivative rules (`ntkit.rules`) against the float64 reference.

Tolerance as in test_engine: 1e-8 relative to max|Θ| in float64. Layer settings are data: each
entry is (id, layer factory, input factory, call); the layer runs inside a small model (layer ->
flatten -> fixed projection to 3 outputs) and must be handled by its rule alone (a fallback
warning is an error there), with both contraction modes checked by `check_rule`. Also: convolution
weight gradients by PyTorch's weight backward, user-registered rules, and `check_rule` catching a
wrong rule.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from zoo import RTOL64, D, rel_err

import ntkit
from ntkit.engine.structured import StructuredFallbackWarning
from ntkit.reference import ntk_reference
from ntkit.rules import RULES, GradFactor, LinearFactor, Rule, check_rule, contract, register_rule
from ntkit.rules import capture as capture_mod
from ntkit.rules import conv as conv_rules
from helpers.engine import Custom, Scale


# ------------------------------------------------------------------------------- layer settings
class Head(nn.Module):
    """layer -> flatten -> fixed projection to 3 outputs (a buffer, not a parameter)."""

    def __init__(self, layer: nn.Module, width: int, call=None) -> None:
        super().__init__()
        self.layer = layer
        self.call = call
        g = torch.Generator().manual_seed(1)
        self.register_buffer("proj", torch.randn(width, 3, generator=g, dtype=D) / width**0.5)

    def forward(self, x):
        y = self.layer(x) if self.call is None else self.call(self.layer, x)
        return torch.tanh(y.reshape(y.shape[0], -1)) @ self.proj


def _bn(cls, c):
    def build():
        m = cls(c)
        m.running_mean.uniform_(-0.5, 0.5)
        m.running_var.uniform_(0.5, 2.0)
        nn.init.uniform_(m.weight, 0.5, 1.5)
        nn.init.uniform_(m.bias, -0.2, 0.2)
        return m.eval()

    return build


def _randn(*shape):
    return lambda n, g: torch.randn(n, *shape, generator=g, dtype=D)


def _tokens(v, s):
    return lambda n, g: torch.randint(0, v, (n, s), generator=g)


def _self_attn(m, x):
    return m(x, x, x)[0]


def _seq_first(m, x):
    x = x.transpose(0, 1)
    return m(x, x, x, need_weights=False)[0].transpose(0, 1)


def _cross_attn(m, x):
    return m(x, x[:, :3, :3], x[:, :3, 3:8])[0]


def _masked(m, x):
    mask = torch.triu(torch.ones(x.shape[1], x.shape[1], dtype=torch.bool), 1)
    return m(x, x, x, attn_mask=mask, need_weights=False)[0]


SETTINGS = [
    ("linear", lambda: nn.Linear(5, 4), _randn(5), None),
    ("linear-3d", lambda: nn.Linear(5, 4), _randn(3, 5), None),
    ("linear-4d-nobias", lambda: nn.Linear(5, 4, bias=False), _randn(2, 3, 5), None),
    ("conv1d-stride-pad", lambda: nn.Conv1d(2, 3, 3, stride=2, padding=1), _randn(2, 9), None),
    ("conv1d-same-dilation", lambda: nn.Conv1d(2, 3, 3, padding="same", dilation=2), _randn(2, 8), None),
    ("conv1d-groups-circular", lambda: nn.Conv1d(4, 2, 3, groups=2, padding=1, padding_mode="circular"), _randn(4, 7), None),
    ("conv2d-mixed", lambda: nn.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2)), _randn(2, 6, 5), None),
    ("conv2d-groups-valid-nobias", lambda: nn.Conv2d(4, 6, 3, groups=2, padding="valid", bias=False), _randn(4, 5, 5), None),
    ("conv2d-depthwise", lambda: nn.Conv2d(3, 6, 3, groups=3, padding=1), _randn(3, 4, 4), None),
    ("conv2d-reflect", lambda: nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), _randn(2, 4, 4), None),
    ("conv2d-same-even-kernel", lambda: nn.Conv2d(2, 2, 4, padding="same"), _randn(2, 5, 5), None),
    ("conv3d-stride", lambda: nn.Conv3d(2, 2, 2, stride=2, padding=1), _randn(2, 3, 4, 3), None),
    ("conv3d-groups-dilation", lambda: nn.Conv3d(2, 4, 2, groups=2, dilation=(1, 2, 1)), _randn(2, 3, 4, 3), None),
    ("convT1d-stride-outpad", lambda: nn.ConvTranspose1d(2, 3, 3, stride=2, output_padding=1), _randn(2, 4), None),
    ("convT1d-dilation", lambda: nn.ConvTranspose1d(2, 3, 3, dilation=3, padding=2, output_padding=2, stride=1),
     _randn(2, 4), None),
    ("convT2d-groups", lambda: nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1, groups=2),
     _randn(4, 3, 3), None),
    ("convT3d", lambda: nn.ConvTranspose3d(2, 2, 2, stride=2), _randn(2, 2, 2, 2), None),
    ("layernorm", lambda: nn.LayerNorm(5), _randn(3, 5), None),
    ("layernorm-2d-nobias", lambda: nn.LayerNorm((3, 4), bias=False), _randn(3, 4), None),
    ("groupnorm", lambda: nn.GroupNorm(2, 4), _randn(4, 3, 2), None),
    ("rmsnorm", lambda: nn.RMSNorm(5), _randn(2, 5), None),
    ("batchnorm1d", _bn(nn.BatchNorm1d, 4), _randn(4), None),
    ("batchnorm1d-seq", _bn(nn.BatchNorm1d, 3), _randn(3, 5), None),
    ("batchnorm2d", _bn(nn.BatchNorm2d, 3), _randn(3, 2, 3), None),
    ("batchnorm3d", _bn(nn.BatchNorm3d, 2), _randn(2, 2, 2, 2), None),
    ("embedding", lambda: nn.Embedding(7, 3), _tokens(7, 4), None),
    ("embedding-padding", lambda: nn.Embedding(6, 3, padding_idx=1), _tokens(6, 5), None),
    ("mha-self", lambda: nn.MultiheadAttention(8, 2, batch_first=True), _randn(4, 8), _self_attn),
    ("mha-seq-first", lambda: nn.MultiheadAttention(8, 2), _randn(4, 8), _seq_first),
    ("mha-kdim-vdim-cross", lambda: nn.MultiheadAttention(8, 2, kdim=3, vdim=5, batch_first=True), _randn(4, 8),
     _cross_attn),
    ("mha-causal-zero-attn", lambda: nn.MultiheadAttention(8, 4, batch_first=True, add_zero_attn=True, bias=False),
     _randn(4, 8), _masked),
]
SETTINGS = [s for s in SETTINGS if not (s[0] == "rmsnorm" and not hasattr(nn, "RMSNorm"))]
_EVEN_SAME = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")


@pytest.mark.parametrize("name,build,inputs,call",
                         [pytest.param(*s, id=s[0], marks=_EVEN_SAME if "even" in s[0] else ()) for s in SETTINGS])
def test_rule_settings(name, build, inputs, call):
    torch.manual_seed(sum(map(ord, name)))
    layer = build().to(D)
    g = torch.Generator().manual_seed(0)
    x1, x2 = inputs(5, g), inputs(3, g)
    with torch.no_grad():
        y = layer(x1) if call is None else call(layer, x1)
    model = Head(layer, y[0].numel(), call).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", StructuredFallbackWarning)  # the rule must handle the layer
        for symmetric in (True, False):
            xb = None if symmetric else x2
            for output in ("full", "trace", "diagonal", "logit:1", "pntk"):
                k = ntkit.ntk(model, x1, xb, method="structured", output=output)
                assert rel_err(k, ntk_reference(model, x1, xb, output)) < RTOL64, (output, symmetric)
    report = check_rule(layer, x1, call=call)  # both contraction modes, raises on failure
    assert report.ok and {m for _, m in report.errors} >= {"grads"}


# ---------------------------------------------------- convolution weights by their own backward
_CONV_G1 = [s for s in SETTINGS if s[0].startswith("conv") and not s[0].startswith("convT")
            and s[1]().groups == 1]


def _count_conv_factor_grads(monkeypatch) -> list[int]:
    calls = []
    orig = conv_rules.ConvFactor.grads

    def counted(self, *a, **kw):
        calls.append(1)
        return orig(self, *a, **kw)

    monkeypatch.setattr(conv_rules.ConvFactor, "grads", counted)
    return calls


@pytest.mark.parametrize("grouped", [True, False], ids=["grouped", "per-sample"])
@pytest.mark.parametrize("name,build,inputs,call",
                         [pytest.param(*s, id=s[0], marks=_EVEN_SAME if "even" in s[0] else ()) for s in _CONV_G1])
def test_conv_weight_backward_path_settings(name, build, inputs, call, grouped, monkeypatch):
    """Every groups = 1 convolution setting (stride, dilation, string padding, reflect padding,
    1d/2d/3d) through `ConvFactor` (threshold lowered so these narrow layers take it), with the
    samples as groups of one weight backward and one call per sample."""
    monkeypatch.setattr(conv_rules, "CONV_BACKWARD_MIN_IN", 0)
    monkeypatch.setattr(conv_rules, "GROUPED_MAX_ROWS", 10**9 if grouped else 0)
    monkeypatch.setattr(contract.LinearTerm, "direct_flops", lambda self, kind: float("inf"))  # small S
    calls = _count_conv_factor_grads(monkeypatch)
    torch.manual_seed(sum(map(ord, name)))
    layer = build().to(D)
    g = torch.Generator().manual_seed(0)
    x1, x2 = inputs(5, g), inputs(3, g)
    with torch.no_grad():
        width = layer(x1)[0].numel()
    model = Head(layer, width).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", StructuredFallbackWarning)
        for symmetric in (True, False):
            xb = None if symmetric else x2
            for output in ("full", "trace", "logit:2", "pntk"):
                k = ntkit.ntk(model, x1, xb, method="structured", output=output)
                assert rel_err(k, ntk_reference(model, x1, xb, output)) < RTOL64, (output, symmetric)
    assert calls


def test_wide_conv_takes_the_weight_backward_path_and_matches_unfolded_patches(monkeypatch):
    """A layer with C_in·K >= CONV_BACKWARD_MIN_IN uses `ConvFactor` by default; its per-sample
    gradients equal the unfolded-patch matmuls (`LinearFactor.grads`) and the kernel the
    reference, for one-backward-per-output (sample-major) and vmapped (output-major) cotangents."""
    calls = _count_conv_factor_grads(monkeypatch)
    c_in = -(-conv_rules.CONV_BACKWARD_MIN_IN // 9)
    monkeypatch.setattr(contract.LinearTerm, "direct_flops", lambda self, kind: float("inf"))  # small S
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(c_in, 4, 3, padding=1, stride=2), nn.Tanh(), nn.Conv2d(4, 3, 3),
                          nn.Flatten(), nn.Linear(3 * 2 * 2, 3)).to(D).eval()  # 7x7 -> 4x4 -> 2x2
    g = torch.Generator().manual_seed(5)
    x1, x2 = torch.randn(4, c_in, 7, 7, generator=g, dtype=D), torch.randn(3, c_in, 7, 7, generator=g, dtype=D)
    for output in ("full", "trace"):
        k = ntkit.ntk(model, x1, x2, method="structured", output=output)
        assert rel_err(k, ntk_reference(model, x1, x2, output)) < RTOL64, output
    assert calls
    layer = model[0]
    target = capture_mod.Target("0", layer, RULES[nn.Conv2d], {"weight": "w"})
    for per_output in (True, False):
        cap = capture_mod.capture(lambda: model(x1), [target], per_output=per_output)
        (f,) = cap.factors()["w"]
        assert isinstance(f, conv_rules.ConvFactor)
        want = LinearFactor.grads(f)
        for limit in (0, 10**9):  # one call per sample, all samples as groups of one call
            monkeypatch.setattr(conv_rules, "GROUPED_MAX_ROWS", limit)
            assert f.grouped == bool(limit)
            assert (f.grads() - want).abs().max() <= 1e-12 * want.abs().max()
            assert (f.grads(slice(1, 4, 2)) - want[1:4:2]).abs().max() <= 1e-12 * want.abs().max()


# ------------------------------------------------------------------------------------- fallbacks
X1 = torch.randn(5, 4, dtype=D, generator=torch.Generator().manual_seed(2))
X2 = torch.randn(3, 4, dtype=D, generator=torch.Generator().manual_seed(3))


def test_user_registered_rule_checked_with_check_rule():
    @register_rule(Scale)
    class ScaleRule(Rule):
        params = ("alpha", "beta")

        def factors(self, module, x, cots, names):
            (d,) = cots  # (O', n, *lead, d)
            o, n = d.shape[:2]
            d = d.reshape(o, n, -1, d.shape[-1])
            x = x.reshape(n, -1, x.shape[-1])
            res = {}
            if "alpha" in names:
                res["alpha"] = GradFactor(torch.einsum("ansc,nsc->anc", d, x), module.alpha.shape)
            if "beta" in names:  # a bias: ones input, kept factored
                res["beta"] = LinearFactor(d.reshape(o, n, -1, 1, d.shape[-1]), module.beta.shape)
            return res

    try:
        assert check_rule(Scale(6), torch.randn(4, 2, 6)).ok
        model = Custom().to(D)
        with warnings.catch_warnings():
            warnings.simplefilter("error", StructuredFallbackWarning)
            for output in ("full", "trace"):
                k = ntkit.ntk(model, X1, X2, method="structured", output=output)
                assert rel_err(k, ntk_reference(model, X1, X2, output)) < RTOL64
    finally:
        del RULES[Scale]


def test_check_rule_catches_a_wrong_rule():
    class Bad(nn.Linear):
        pass

    @register_rule(Bad)
    class BadRule(Rule):
        def factors(self, module, x, cots, names):
            d = cots[0]
            o, n = d.shape[:2]
            d5 = d.reshape(o, n, 1, 1, -1)
            return {"weight": LinearFactor(2 * d5, module.weight.shape, x=x.reshape(n, 1, 1, -1)),
                    "bias": LinearFactor(d5, module.bias.shape)}

    try:
        with pytest.raises(AssertionError, match="rule check of Bad: FAILED"):
            check_rule(Bad(3, 2), torch.randn(4, 3))
        model = nn.Sequential(Bad(3, 2)).to(D)  # the engine's gradient check catches it too
        x = torch.randn(4, 3, dtype=D)
        with pytest.warns(StructuredFallbackWarning, match=r"parameters 0\.weight$"):
            k = ntkit.ntk(model, x, method="structured")
        assert rel_err(k, ntk_reference(model, x)) < RTOL64
    finally:
        del RULES[Bad]


def test_subclass_overriding_forward_has_no_rule():
    class Doubled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    model = nn.Sequential(Doubled(4, 3)).to(D)
    with pytest.warns(StructuredFallbackWarning, match="unknown layer type Doubled"):
        k = ntkit.ntk(model, X1, method="structured")
    assert rel_err(k, ntk_reference(model, X1)) < RTOL64
