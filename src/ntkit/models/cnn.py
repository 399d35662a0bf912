"""A plain convolutional network: ``cnn:depth=3,channels=32``.

``depth`` x [conv3x3 with ``channels`` filters, padding 1, bias, act], a global average pool and a
Linear readout. The default on (3, 32, 32) inputs with 10 classes is the benchmark CNN (PEERS
workload W2), P = 19,722.
"""

from __future__ import annotations

from torch import nn

from ntkit.models._layers import Activation, Init, activation, image_shape, normal_init_
from ntkit.models.spec import register_model


@register_model("cnn")
def cnn(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    depth: int = 3,
    channels: int = 32,
    act: Activation = "relu",
    bias: bool = True,
    init: Init = "torch",
) -> nn.Sequential:
    """``(N, C, H, W)`` → ``(N, num_classes)``; any H, W ≥ 1 (padding keeps the size)."""
    c_in, _, _ = image_shape(input_shape, "cnn")
    convs = [
        nn.Conv2d(c_in if i == 0 else channels, channels, 3, padding=1, bias=bias)
        for i in range(depth)
    ]
    readout = nn.Linear(channels, num_classes, bias=bias)
    layers: list[nn.Module] = []
    for conv in convs:
        layers += [conv, activation(act)]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), readout]
    if init == "normal":
        normal_init_([*convs, readout])
    return nn.Sequential(*layers)
