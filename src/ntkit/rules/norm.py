"""Affine parameters of normalization layers: `nn.LayerNorm`, `nn.GroupNorm`, `nn.RMSNorm`,
`nn.BatchNorm1d/2d/3d` (eval mode, running statistics).

y = x̂ ⊙ γ + β, with x̂ the normalized input (recomputed from the captured input). The Jacobian is
elementwise, so the per-sample gradients are as small as the parameters and cheapest formed
directly: g_γ[a, n, c] = Σ_s d[a, n, s, c] x̂[n, s, c], g_β[a, n, c] = Σ_s d[a, n, s, c], summed over
every position s that shares the channel c (`GradFactor`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ntkit.rules.factors import GradFactor
from ntkit.rules.registry import Rule, register_rule


def _channel_factors(module, xhat, d, names, channel_dims: int, weight="weight", bias="bias"):
    """Factors for γ, β of shape (C...) where the channels are the last `channel_dims` axes of
    xhat (n, ..., C...) / d (O', n, ..., C...)."""
    o, n = d.shape[:2]
    p = math.prod(d.shape[d.ndim - channel_dims :])
    dm = d.reshape(o, n, -1, p)
    res = {}
    if weight in names and getattr(module, weight, None) is not None:
        g = torch.einsum("ansc,nsc->anc", dm, xhat.reshape(n, -1, p))
        res[weight] = GradFactor(g, getattr(module, weight).shape)
    if bias in names and getattr(module, bias, None) is not None:
        res[bias] = GradFactor(dm.sum(2), getattr(module, bias).shape)
    return res


@register_rule(nn.LayerNorm)
class LayerNormRule(Rule):
    def factors(self, module, x, cots, names):
        xhat = F.layer_norm(x, module.normalized_shape, None, None, module.eps)
        return _channel_factors(module, xhat, cots[0], names, len(module.normalized_shape))


if hasattr(nn, "RMSNorm"):

    @register_rule(nn.RMSNorm)
    class RMSNormRule(Rule):
        params = ("weight",)

        def factors(self, module, x, cots, names):
            xhat = F.rms_norm(x, module.normalized_shape, None, module.eps)
            return _channel_factors(module, xhat, cots[0], names, len(module.normalized_shape))


def _channels_last(t: torch.Tensor, lead: int) -> torch.Tensor:
    """(lead dims..., C, *L) -> (lead dims..., *L, C)."""
    return t.movedim(lead, -1)


@register_rule(nn.GroupNorm)
class GroupNormRule(Rule):
    def factors(self, module, x, cots, names):
        xhat = F.group_norm(x, module.num_groups, None, None, module.eps)
        return _channel_factors(module, _channels_last(xhat, 1), _channels_last(cots[0], 2), names, 1)


@register_rule(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
class BatchNormRule(Rule):
    """Eval-mode batch norm (running statistics); in training mode samples interact."""

    def supports(self, module):
        if module.training:
            return f"{type(module).__name__} in training mode"
        if not module.track_running_stats or module.running_mean is None:
            return f"{type(module).__name__} without running statistics"
        return None

    def save(self, module, args, kwargs, output):
        # the buffers as functional_call sees them (they may live on another device)
        return args[0].detach(), module.running_mean, module.running_var

    def factors(self, module, saved, cots, names):
        x, mean, var = saved
        shape = (1, -1) + (1,) * (x.ndim - 2)
        xhat = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + module.eps)
        return _channel_factors(module, _channels_last(xhat, 1), _channels_last(cots[0], 2), names, 1)
