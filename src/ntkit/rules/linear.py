"""`nn.Linear` (any leading dimensions): weight and bias as `LinearFactor`s.

For y = x Wᵀ + b with x: (n, *lead, in), the leading dims are the S shared positions:
g_W[a, n] = Σ_s d[a, n, s] ⊗ x[n, s] and g_b[a, n] = Σ_s d[a, n, s], so two calls contract as
Σ_{s,t} (d1·d2)(x1·x2 + 1) (Novak et al. 2022, section 3.3, "Dense").
"""

from __future__ import annotations

from torch import nn

from ntkit.rules.factors import LinearFactor
from ntkit.rules.registry import Rule, register_rule


def linear_factors(x, d, weight_shape, bias_shape, names, weight="weight", bias="bias"):
    """Factors of y = x Wᵀ + b from x: (n, *lead, in) and d: (O', n, *lead, out)."""
    o, n = d.shape[:2]
    d5 = d.reshape(o, n, -1, 1, d.shape[-1])
    res = {}
    if weight in names:
        res[weight] = LinearFactor(d5, weight_shape, x=x.reshape(n, -1, 1, x.shape[-1]))
    if bias in names and bias_shape is not None:
        res[bias] = LinearFactor(d5, bias_shape)
    return res


@register_rule(nn.Linear)
class LinearRule(Rule):
    """Linear layers; inputs (n, *lead, in) with the samples on the first axis."""

    def factors(self, module, saved, cots, names):
        bias = None if module.bias is None else module.bias.shape
        return linear_factors(saved, cots[0], module.weight.shape, bias, names)
