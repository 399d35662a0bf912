"""Wide residual networks (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016).

WRN-DEPTH-WIDEN, written ``wrn:16-4`` or ``wrn:depth=16,widen=4``: a 3x3 stem of 16 channels,
three groups of n = (DEPTH - 4) / 6 pre-activation blocks [norm, ReLU, conv3x3, norm, ReLU,
conv3x3] with 16·WIDEN, 32·WIDEN, 64·WIDEN channels (the last two groups start with stride 2),
a final norm and ReLU, a global average pool and a Linear readout. A 1x1 projection of the
pre-activated input is the shortcut where the shape changes, as in the authors' code.
WRN-28-10 on (3, 32, 32) with 10 classes has P = 36,479,194; WRN-16-4 has 2,748,890.

Dropout is left out: the models are evaluated in eval mode, where it is the identity.
``norm`` and conv biases work as in :mod:`ntkit.models.resnet`.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ntkit.models._layers import Norm, image_shape, norm2d
from ntkit.models.spec import ModelSpecError, register_model


class WideBasic(nn.Module):
    """x + conv(relu(norm(conv(relu(norm(x)))))), the pre-activation block."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str) -> None:
        super().__init__()
        bias = norm == "none"
        self.bn1 = norm2d(norm, c_in)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)
        self.bn2 = norm2d(norm, c_out)
        self.relu2 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=bias)
        self.shortcut: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(pre))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """``(N, C, H, W)`` → ``(N, num_classes)``; any H, W ≥ 1."""

    def __init__(
        self, in_channels: int, num_classes: int, depth: int = 16, widen: int = 4, norm: str = "bn"
    ) -> None:
        super().__init__()
        n = (depth - 4) // 6
        widths = (16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=norm == "none")
        groups = []
        c_in = 16
        for i, c_out in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks = [WideBasic(c_in, c_out, stride, norm)]
            blocks += [WideBasic(c_out, c_out, 1, norm) for _ in range(n - 1)]
            groups.append(nn.Sequential(*blocks))
            c_in = c_out
        self.block1, self.block2, self.block3 = groups
        self.bn = norm2d(norm, c_in)
        self.relu = nn.ReLU(inplace=False)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(self.flatten(self.avgpool(self.relu(self.bn(x)))))


def _shorthand(item: str) -> dict[str, str]:
    match = re.fullmatch(r"(\d+)-(\d+)", item)  # wrn:16-4
    if match is None:
        raise ModelSpecError(
            f"malformed option '{item}' of 'wrn': expected key=value or DEPTH-WIDEN as in wrn:16-4"
        )
    return {"depth": match[1], "widen": match[2]}


def _check(options: dict) -> None:
    depth = options["depth"]
    if depth < 10 or (depth - 4) % 6:  # three groups of n two-conv blocks, a stem and a readout
        raise ModelSpecError(
            f"wrn depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}"
        )


@register_model("wrn", shorthand=_shorthand, check=_check)
def wrn(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    depth: int = 16,
    widen: int = 4,
    norm: Norm = "bn",
) -> WideResNet:
    """WRN-``depth``-``widen``."""
    c_in, _, _ = image_shape(input_shape, "wrn")
    _check({"depth": depth})  # also when called directly, not through a spec
    return WideResNet(c_in, num_classes, depth=depth, widen=widen, norm=norm)
