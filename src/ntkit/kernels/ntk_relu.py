"""The infinite-width NTK of a ReLU MLP, by the arc-cosine recursion.

Jacot, Gabriel & Hongler, "Neural Tangent Kernel" (NeurIPS 2018); the ReLU expectations are the
arc-cosine kernels of Cho & Saul (NeurIPS 2009); the He-scaled form follows Arora et al., "On Exact
Computation with an Infinitely Wide Neural Net" (NeurIPS 2019).

The network (NTK parametrization, all weights and biases i.i.d. N(0, 1), input dimension d,
`depth` hidden ReLU layers of width n → ∞):

    h¹ = W¹ x / √d + b·β¹
    hˡ⁺¹ = Wˡ⁺¹ √2·relu(hˡ) / √n + b·βˡ⁺¹        l = 1 … depth
    f(x) = h^{depth+1}                            (each output logit has this kernel)

with b = `bias`. Its NNGP Σ and NTK Θ follow the recursion, for ρ = Σˡ(x,z)/√(Σˡ(x,x)Σˡ(z,z)):

    Σ¹(x, z) = x·z / d + b²,                      Θ¹ = Σ¹
    κ₀(ρ) = 1 − arccos(ρ)/π,                      κ₁(ρ) = (√(1−ρ²) + (π − arccos ρ)·ρ) / π
    Σˡ⁺¹ = √(Σˡ(x,x)Σˡ(z,z))·κ₁(ρ) + b²,          Θˡ⁺¹ = Θˡ·κ₀(ρ) + Σˡ⁺¹

The √2 keeps Σˡ(x, x) = ‖x‖²/d + l·b² from shrinking with depth. EigenPro3's public `ntk_relu`
is the same recursion without the 1/d and with its `depth` counting layers (depth − 1 hidden).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ntkit.kernels.base import Kernel

__all__ = ["NtkRelu", "ntk_relu_recursion"]


def ntk_relu_recursion(
    sxz: torch.Tensor, sxx: torch.Tensor, szz: torch.Tensor, depth: int, bias: float
) -> torch.Tensor:
    """Θ^{depth+1} from the first-layer Σ¹: sxz (n, m), sxx (n, 1), szz (1, m) -> (n, m)."""
    b2 = bias * bias
    theta = sxz.clone()
    for _ in range(depth):
        norm = (sxx * szz).sqrt_()
        rho = (sxz / norm.clamp(min=torch.finfo(sxz.dtype).tiny)).clamp_(-1.0, 1.0)
        angle = torch.arccos(rho)
        k0 = 1.0 - angle / math.pi
        k1 = ((1.0 - rho * rho).clamp_(min=0).sqrt_() + (math.pi - angle) * rho) / math.pi
        sxz = norm * k1 + b2
        # On the diagonal ρ = 1: κ₀ = κ₁ = 1, so Σ(x, x) just gains b² per layer.
        sxx, szz = sxx + b2, szz + b2
        theta = theta * k0 + sxz
    return theta


class NtkRelu(Kernel):
    """The infinite-width NTK of a ReLU MLP with `depth` hidden layers (see the module docstring).

    depth=0 is the linear kernel x·z/d + bias². Inputs (N, *input) are flattened to d features.
    """

    _temporaries = 6

    def __init__(self, depth: int = 2, bias: float = 0.0, **kw: Any) -> None:
        super().__init__(**kw)
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 0:
            raise ValueError(f"depth must be a non-negative integer (hidden layers), got {depth!r}")
        bias = float(bias)
        if not math.isfinite(bias):
            raise ValueError(f"bias must be finite, got {bias!r}")
        self.depth, self.bias = depth, bias

    def _block(self, x, z, same):
        d = x.shape[1]
        b2 = self.bias * self.bias
        sxz = (x @ z.T) / d + b2
        sxx = (x * x).sum(1, keepdim=True) / d + b2
        szz = sxx.T if same else ((z * z).sum(1, keepdim=True) / d + b2).T
        if same:  # exact ρ = 1 on the diagonal, not 1 − rounding (arccos is steep there)
            sxz.diagonal().copy_(sxx[:, 0])
        return ntk_relu_recursion(sxz, sxx, szz, self.depth, self.bias)

    def _diag(self, x):
        b2 = self.bias * self.bias
        s = (x * x).sum(1) / x.shape[1] + b2
        theta = s.clone()
        for _ in range(self.depth):
            s = s + b2
            theta = theta + s
        return theta

    @property
    def spec(self) -> str:
        return f"ntk-relu:depth={self.depth},bias={self.bias!r}"
