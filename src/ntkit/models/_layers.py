"""Small pieces the model families share: activations, normalizations, an init, shape checks.

Every piece is a standard ``nn`` module where one exists, so that per-layer rules (structured
derivatives) recognise them, and nothing works in place, so that ``torch.func`` can transform it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

Activation = Literal["relu", "tanh", "gelu", "erf"]
Norm = Literal["bn", "gn", "none"]
Init = Literal["torch", "normal"]


class Erf(nn.Module):
    """The error function, the activation with a closed-form infinite-width kernel (Williams 1997)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.erf(x)


def activation(name: str) -> nn.Module:
    """A fresh activation module; ``inplace=False`` because vmap/jacrev need the input kept."""
    if name == "relu":
        return nn.ReLU(inplace=False)
    if name == "tanh":
        return nn.Tanh()
    if name == "gelu":
        return nn.GELU()
    if name == "erf":
        return Erf()
    raise ValueError(f"unknown activation {name!r}; valid: relu, tanh, gelu, erf")


def norm2d(kind: str, channels: int) -> nn.Module:
    """BatchNorm2d (``bn``), GroupNorm (``gn``) or nothing (``none``) over ``channels``.

    GroupNorm uses gcd(32, channels // 2) groups: 32 as in Wu & He (2018) for the usual widths
    (multiples of 64), fewer for narrow networks, and always at least two channels per group,
    because a group of one value at 1x1 resolution (the last stage on small inputs) is
    normalized to a constant, which torch rejects.
    """
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(math.gcd(32, channels // 2) if channels > 1 else 1, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown normalization {kind!r}; valid: bn, gn, none")


@torch.no_grad()
def normal_init_(layers: Sequence[nn.Module]) -> None:
    """Standard-parameterization Gaussian init of Linear/Conv ``layers`` (in forward order).

    Weights N(0, 2/fan_in) (He: keeps ReLU pre-activations at unit scale), the readout (last
    layer) N(0, 1/fan_in), biases N(0, 0.1²): neural-tangents' ``W_std=√2, b_std=0.1``, the
    setting of the PEERS benchmark workloads, so weights can be compared across libraries.
    """
    for i, layer in enumerate(layers):
        gain = 1.0 if i == len(layers) - 1 else 2.0
        fan_in = layer.weight[0].numel()
        layer.weight.normal_(0.0, math.sqrt(gain / fan_in))
        if layer.bias is not None:
            layer.bias.normal_(0.0, 0.1)


def image_shape(input_shape: Sequence[int], model: str) -> tuple[int, int, int]:
    """``(C, H, W)`` from ``input_shape``; convolutional families need exactly that."""
    if len(input_shape) != 3:
        raise ValueError(
            f"model '{model}' is convolutional and needs input_shape (C, H, W), got "
            f"{tuple(input_shape)}; use 'mlp' for flat inputs"
        )
    c, h, w = (int(d) for d in input_shape)
    return c, h, w
