"""Shared by the engine, rules and tiled tests: the engine's planner with tiny budgets, a layer
without a rule, a spy on the tf32x3 products, and the peak-RSS skip mark."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from ntkit._runtime import precision
from ntkit._runtime.rss import reset_peak


def engine_ntk(model, x1, x2=None, *, method="auto", output="full", params=None, batch_size=None, memory=None):
    """`ntkit.ntk` through the engine's own planner: tiny budgets as a knob for blocks and
    groups (the public entry points refuse budgets below one input's working memory)."""
    from ntkit.engine.call import prepare

    call = prepare(model, x1, x2, output, params, batch_size, None, memory)
    return call.run(call.choose() if method == "auto" else method)


def run_case(case, symmetric: bool, **kw) -> torch.Tensor:
    """`case`'s kernel (x1 against itself, or against x2), fallback warnings silenced; a `memory=`
    goes through the engine's planner (`engine_ntk`), so tiny budgets shape blocks and groups."""
    import warnings

    import ntkit
    from ntkit.engine.api import ForwardADFallbackWarning
    from ntkit.engine.functional import VmapFallbackWarning
    from ntkit.engine.structured import StructuredFallbackWarning

    x1, x2 = case.inputs()
    with warnings.catch_warnings():
        for category in (VmapFallbackWarning, ForwardADFallbackWarning, StructuredFallbackWarning):
            warnings.simplefilter("ignore", category)
        ntk = engine_ntk if "memory" in kw else ntkit.ntk
        return ntk(case.model(), x1, None if symmetric else x2, **kw)


class Scale(nn.Module):
    """y = x * alpha + beta, elementwise: a layer without a registered rule."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.linspace(0.5, 1.5, d))
        self.beta = nn.Parameter(torch.linspace(-0.1, 0.1, d))

    def forward(self, x):
        return x * self.alpha + self.beta


class Custom(nn.Module):
    """Linear, a `Scale` (no rule: falls back to Jacobian contraction), Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.scale = Scale(6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.scale(self.fc1(x))))


def spy_tf32x3(monkeypatch) -> list[int]:
    """Record the inner dimension of every tf32x3 split product from now on."""
    calls: list[int] = []
    inner = precision._matmul_tf32x3

    def counted(a, b, out):
        calls.append(a.shape[-1])
        return inner(a, b, out)

    monkeypatch.setattr(precision, "_matmul_tf32x3", counted)
    return calls


needs_rss = pytest.mark.skipif(not sys.platform.startswith("linux") or not reset_peak(),
                               reason="peak RSS is measured with /proc/self/clear_refs (Linux)")
