"""The Myrtle CNNs of Shankar et al., "Neural Kernels Without Tangents" (ICML 2020).

Myrtle-D (D = 5, 7, 10) has D - 1 conv3x3+ReLU layers in three stages of (2, 1, 1), (2, 2, 2) or
(3, 3, 3) layers, a 2x2 average pool after the first two stages, three more 2x2 pools after the
last (8x8 → 1x1 on CIFAR), and a Linear readout. It is the architecture of neural-tangents'
``MyrtleNetwork`` example.

Small inputs. The final three pools are written as one global average pool: on 32x32 inputs
(8x8 at that point) the two are the same function, and the global pool is defined for any size.
A 2x2 pool after stage 1 or 2 is left out when the feature map is already smaller than 2 on a
side, so the spatial size never drops below 1: (1, 8, 8) digits go 8 → 4 → 2 → global pool,
(1, 28, 28) MNIST goes 28 → 14 → 7 → global pool. The plan is fixed when the model is built,
from ``input_shape``, so the forward has no data-dependent control flow.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from ntkit.models._layers import image_shape
from ntkit.models.spec import ModelSpecError, register_model

#: conv+ReLU layers per stage, by depth (Shankar et al. 2020; neural-tangents' example).
LAYER_FACTOR: dict[int, tuple[int, int, int]] = {5: (2, 1, 1), 7: (2, 2, 2), 10: (3, 3, 3)}


def _shorthand(item: str) -> dict[str, str]:
    if not item.isdigit():
        raise ModelSpecError(
            f"malformed option '{item}' of 'myrtle': expected key=value or a depth as in myrtle:5"
        )
    return {"depth": item}  # myrtle:5


@register_model("myrtle", shorthand=_shorthand)
def myrtle(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    depth: Literal[5, 7, 10] = 5,
    width: int = 64,
    bias: bool = True,
) -> nn.Sequential:
    """``(N, C, H, W)`` → ``(N, num_classes)``, Myrtle-``depth`` with ``width`` channels."""
    c_in, h, w = image_shape(input_shape, "myrtle")
    layers: list[nn.Module] = []
    for stage, count in enumerate(LAYER_FACTOR[depth]):
        for _ in range(count):
            layers += [nn.Conv2d(c_in, width, 3, padding=1, bias=bias), nn.ReLU(inplace=False)]
            c_in = width
        if stage < 2 and min(h, w) >= 2:
            layers.append(nn.AvgPool2d(2))
            h, w = h // 2, w // 2
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes, bias=bias)]
    return nn.Sequential(*layers)
