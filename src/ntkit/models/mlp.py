"""Fully connected networks: ``mlp:depth=D,width=W,act=relu``.

The benchmark "10-layer ReLU MLP" (PEERS workload W1) is ``mlp:depth=10,width=256`` (on 3-dim
inputs, P = 529,930).
"""

from __future__ import annotations

import itertools
import math

from torch import nn

from ntkit.models._layers import Activation, Init, activation, normal_init_
from ntkit.models.spec import register_model


@register_model("mlp")
def mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    depth: int = 3,
    width: int = 512,
    act: Activation = "relu",
    bias: bool = True,
    init: Init = "torch",
) -> nn.Sequential:
    """``(N, *input_shape)`` → ``(N, num_classes)`` through ``depth`` Linear layers in total.

    ``depth - 1`` hidden layers of ``width`` units, each followed by ``act``; ``depth=1`` is a
    linear model. ``init="torch"`` keeps PyTorch's default init, ``"normal"`` see
    :func:`~ntkit.models._layers.normal_init_`.
    """
    sizes = [math.prod(input_shape)] + [width] * (depth - 1) + [num_classes]
    linears = [nn.Linear(a, b, bias=bias) for a, b in itertools.pairwise(sizes)]
    layers: list[nn.Module] = [nn.Flatten()]
    for i, linear in enumerate(linears):
        layers.append(linear)
        if i < len(linears) - 1:
            layers.append(activation(act))
    if init == "normal":
        normal_init_(linears)
    return nn.Sequential(*layers)
