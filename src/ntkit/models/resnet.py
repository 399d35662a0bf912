"""CIFAR-style ResNet-18 (He et al., "Deep Residual Learning for Image Recognition", 2016).

The CIFAR variant: a 3x3 stride-1 stem and no max-pool (instead of ImageNet's 7x7 stride-2 stem
and max-pool), then BasicBlocks [2, 2, 2, 2] of widths width·(1, 2, 4, 8), the last three stages
starting with stride 2, a global average pool and a Linear readout. With width=64 on (3, 32, 32)
inputs and 10 classes, P = 11,173,962 (torchvision's ImageNet ResNet-18 with 10 classes has
11,181,642: the 7x7 stem is the difference).

Module names follow torchvision (``conv1``, ``layer1.0.bn2``, ``downsample``, ``fc``) so
parameter globs such as ``fc.*`` mean the same thing on both.

``norm``: ``bn`` (BatchNorm, used with its running statistics: the model is returned in eval
mode, where it acts per sample), ``gn`` (GroupNorm, per sample in any mode) or ``none``. Convs
have no bias when a normalization follows them (its shift makes one redundant) and a bias
with ``norm=none``.
"""

from __future__ import annotations

import torch
from torch import nn

from ntkit.models._layers import Norm, image_shape, norm2d
from ntkit.models.spec import register_model


class BasicBlock(nn.Module):
    """relu(norm(conv(relu(norm(conv(x))))) + shortcut(x)), the post-activation ResNet block."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str) -> None:
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = norm2d(norm, c_out)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=bias)
        self.bn2 = norm2d(norm, c_out)
        self.relu2 = nn.ReLU(inplace=False)
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:  # a 1x1 projection where the shapes differ (option B)
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=bias), norm2d(norm, c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + identity)


class ResNet18(nn.Module):
    """``(N, C, H, W)`` → ``(N, num_classes)``; any H, W ≥ 1 (stride-2 convs floor at 1)."""

    def __init__(
        self, in_channels: int, num_classes: int, width: int = 64, norm: str = "bn"
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=norm == "none")
        self.bn1 = norm2d(norm, width)
        self.relu = nn.ReLU(inplace=False)
        stages = []
        c_in = width
        for i, blocks in enumerate((2, 2, 2, 2)):
            c_out = width * 2**i
            stride = 1 if i == 0 else 2
            stage = [BasicBlock(c_in, c_out, stride, norm)]
            stage += [BasicBlock(c_out, c_out, 1, norm) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            c_in = c_out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.avgpool(x)))


@register_model("resnet18")
def resnet18(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    width: int = 64,
    norm: Norm = "bn",
) -> ResNet18:
    """CIFAR-style ResNet-18 with stage widths ``width``·(1, 2, 4, 8)."""
    c_in, _, _ = image_shape(input_shape, "resnet18")
    return ResNet18(c_in, num_classes, width=width, norm=norm)
