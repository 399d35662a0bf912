"""Every method on the shipped model families (`ntkit.models`) against the float64 reference.

The zoo (tests/zoo.py) checks each layer type; these are whole published architectures (CIFAR
ResNet-18 with stride-2 stages and 1x1 downsample convolutions, WRN, Myrtle, the W2-CNN family),
wide enough that structured derivatives form convolution weight gradients by PyTorch's weight
backward (`ConvFactor`), on both of its paths: all samples as the groups of one call, and one
call per sample. Tolerance: 1e-8 relative to max|Θ| in float64, as everywhere (tests/zoo.py).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from zoo import RTOL64, rel_err

import ntkit
from ntkit.engine.structured import StructuredFallbackWarning
from ntkit.models import build_model
from ntkit.reference import ntk_reference
from ntkit.rules import contract
from ntkit.rules import conv as conv_rules

# Widths chosen so that inner convolutions have C_in·K >= CONV_BACKWARD_MIN_IN (ConvFactor).
MODELS = {
    "resnet18-bn": ("resnet18:width=8", (3, 8, 8)),
    "resnet18-gn": ("resnet18:width=8,norm=gn", (3, 8, 8)),
    "wrn-bn": ("wrn:depth=10,widen=1", (3, 8, 8)),
    "myrtle5": ("myrtle:depth=5,width=8", (3, 8, 8)),
    "cnn": ("cnn:depth=2,channels=8", (1, 8, 8)),
}


@pytest.fixture(scope="module")
def built():
    out = {}
    for name, (spec, shape) in MODELS.items():
        model = build_model(spec, shape, 4, seed=1).double()
        g = torch.Generator().manual_seed(2)
        x1 = torch.randn(3, *shape, generator=g, dtype=torch.float64)
        x2 = torch.randn(2, *shape, generator=g, dtype=torch.float64)
        out[name] = (model, x1, x2)
    return out


_REF: dict = {}


def _reference(name, built, symmetric, output):
    key = (name, symmetric, output)
    if key not in _REF:
        model, x1, x2 = built[name]
        _REF[key] = ntk_reference(model, x1, None if symmetric else x2, output)
    return _REF[key]


@pytest.mark.parametrize("output", ["full", "trace", "logit:1"])
@pytest.mark.parametrize("path", ["grouped", "per-sample", "jacobian"])
@pytest.mark.parametrize("name", list(MODELS))
def test_shipped_models_match_reference(name, path, output, built, monkeypatch):
    model, x1, x2 = built[name]
    calls: list[bool] = []
    if path != "jacobian":
        monkeypatch.setattr(conv_rules, "GROUPED_MAX_ROWS", 10**9 if path == "grouped" else 0)
        grads = conv_rules.ConvFactor.grads

        def counted(self, *a, **kw):
            calls.append(self.grouped)
            return grads(self, *a, **kw)

        monkeypatch.setattr(conv_rules.ConvFactor, "grads", counted)
        # Per-sample gradients for every layer (the direct mode, chosen for some of these small
        # images, is checked by tests/test_structured.py).
        monkeypatch.setattr(contract.LinearTerm, "direct_flops", lambda self, kind: float("inf"))
    method = "jacobian" if path == "jacobian" else "structured"
    for symmetric in (True, False):
        with warnings.catch_warnings():
            warnings.simplefilter("error", StructuredFallbackWarning)  # every shipped layer has a rule
            k = ntkit.ntk(model, x1, None if symmetric else x2, output=output, method=method)
        assert rel_err(k, _reference(name, built, symmetric, output)) < RTOL64, (symmetric, output)
    if path != "jacobian":  # the weight-backward path really ran, on the path asked for
        assert calls and all(c == (path == "grouped") for c in calls)
