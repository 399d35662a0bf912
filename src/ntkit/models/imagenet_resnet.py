"""ImageNet-style ResNet-18/34/50 (He et al. 2016) with torchvision's module names, built without it.

``resnet-18``, ``resnet-34`` (BasicBlock) and ``resnet-50`` (Bottleneck, stride on the 3x3 conv as
in torchvision's "ResNet v1.5"): a 7x7 stride-2 stem, a 3x3 stride-2 max-pool, four stages, a global
average pool and ``fc``. The state-dict keys, their order and every shape are torchvision's
(``conv1.weight``, ``bn1.running_mean``, ``layer1.0.downsample.0.weight``, ``fc.weight``, ...), so a
state dict saved from ``torchvision.models.resnet18()`` loads strictly, and P is torchvision's
(11,689,512 / 21,797,672 / 25,557,032 with 1000 classes).

Construction follows torchvision's order (each stage's projection before its block's convs, then
``kaiming_normal_(fan_out)`` over ``modules()``), so the random numbers a seed gives are drawn in
the same sequence; the classifier head (``head=N``) is drawn after that, and after the weights are
loaded, which is what empirical-ntks' ``torch.manual_seed(438); m = resnet18(pretrained=True);
m.fc = nn.Linear(512, 1)`` does. (Bit-identity with torchvision's draw is by construction, not
checked against torchvision, which ntkit does not depend on.)

``pretrained=true`` loads torchvision's ImageNet weights from the torch hub cache
(``torch.hub.get_dir()/checkpoints/resnet18-f37072fd.pth``, ...; the older names
``resnet18-5c106cde.pth``, ... are accepted too) unless ``--weights`` names a file; nothing is
downloaded. The empirical-ntks names ``resnet-18_pretrained`` (``-34``, ``-50``) mean
``resnet-N:pretrained=true,head=1,seed=438``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ntkit.models._layers import image_shape
from ntkit.models.spec import ModelSpecError, register_alias, register_model

__all__ = ["HUB_FILES", "PretrainedWeightsNotFoundError", "ImageNetResNet", "hub_weights_path"]

#: torchvision's checkpoint file names of the ImageNet-1k weights (IMAGENET1K_V1, what
#: ``pretrained=True`` loads), current name first, the name torchvision < 0.13 saved second.
HUB_FILES: dict[int, tuple[str, ...]] = {
    18: ("resnet18-f37072fd.pth", "resnet18-5c106cde.pth"),
    34: ("resnet34-b627a593.pth", "resnet34-333f7ec4.pth"),
    50: ("resnet50-0676ba61.pth", "resnet50-19c8e357.pth"),
}
_URL = "https://download.pytorch.org/models/"
_LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}
IMAGENET_CLASSES = 1000


class PretrainedWeightsNotFoundError(FileNotFoundError):
    """``pretrained=true`` without ``--weights`` and no torchvision checkpoint in the hub cache."""


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()  # not in place: vmap/jacrev still need the activation
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (v1.5: the stride sits on the 3x3 conv), expansion 4."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ImageNetResNet(nn.Module):
    """``(N, C, H, W)`` → ``(N, num_classes)``; torchvision's ResNet layout (any H, W ≥ 1)."""

    def __init__(self, depth: int, in_channels: int = 3, num_classes: int = IMAGENET_CLASSES) -> None:
        super().__init__()
        block: type[BasicBlock] | type[Bottleneck] = Bottleneck if depth >= 50 else BasicBlock
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        c_in = 64
        stages = []
        for i, blocks in enumerate(_LAYERS[depth]):
            planes, stride = 64 * 2**i, 1 if i == 0 else 2
            downsample = None
            if stride != 1 or c_in != planes * block.expansion:
                # created before the block's own convs, as torchvision's _make_layer does
                downsample = nn.Sequential(
                    nn.Conv2d(c_in, planes * block.expansion, 1, stride=stride, bias=False),
                    nn.BatchNorm2d(planes * block.expansion),
                )
            stage = [block(c_in, planes, stride, downsample)]
            c_in = planes * block.expansion
            stage += [block(c_in, planes, 1, None) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def hub_weights_path(depth: int) -> Path:
    """Where torchvision keeps the ImageNet weights of ResNet-``depth``: the first of its file
    names (:data:`HUB_FILES`) present in ``torch.hub.get_dir()/checkpoints``, else the current one."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    for name in HUB_FILES[depth]:
        if (folder / name).is_file():
            return folder / name
    return folder / HUB_FILES[depth][0]


def _default_weights(depth: int, options: dict[str, Any]) -> str | None:
    if not options.get("pretrained"):
        return None
    path = hub_weights_path(depth)
    if not path.is_file():
        name = HUB_FILES[depth][0]
        raise PretrainedWeightsNotFoundError(
            f"resnet-{depth}:pretrained=true needs torchvision's ImageNet weights {path}, which is not "
            f"there (ntkit never downloads): pass --weights FILE with a torchvision-format state dict, or "
            f"place {_URL}{name} at {path} (set TORCH_HOME to use another cache folder)"
        )
    return os.fspath(path)


def _replace_head(model: nn.Module, options: dict[str, Any]) -> nn.Module:
    """``fc`` replaced by a fresh ``Linear(in_features, head)`` (drawn after the weights load)."""
    head = options.get("head")
    if head is not None:
        model.fc = nn.Linear(model.fc.in_features, head)
    return model


def _register(depth: int) -> None:
    def default_weights(options: dict[str, Any]) -> str | None:
        return _default_weights(depth, options)

    def implied_data(options: dict[str, Any]) -> str | None:
        # ImageNet weights expect ImageNet-sized, ImageNet-normalized inputs (empirical-ntks'
        # transform for CIFAR: Resize(224), ToTensor, Normalize(ImageNet mean, std)).
        return "resize=224,normalize=imagenet" if options.get("pretrained") else None

    @register_model(f"resnet-{depth}", default_weights=default_weights, after_load=_replace_head,
                    implied_data=implied_data)
    def build(
        input_shape: tuple[int, ...],
        num_classes: int,
        *,
        pretrained: bool = False,
        head: int | None = None,
        seed: int | None = None,
    ) -> ImageNetResNet:
        c_in, _, _ = image_shape(input_shape, f"resnet-{depth}")
        if pretrained and c_in != 3:
            raise ModelSpecError(
                f"resnet-{depth}:pretrained=true takes 3-channel images, the data has {c_in} channel(s): "
                "use colour data, or drop pretrained=true"
            )
        if seed is not None:  # the spec's own seed (empirical-ntks draws with 438) replaces --seed
            torch.default_generator.manual_seed(seed)
        # torchvision's 1000-class fc where it is replaced or loaded from ImageNet weights
        classes = IMAGENET_CLASSES if head is not None or pretrained else num_classes
        return ImageNetResNet(depth, c_in, classes)

    build.__doc__ = f"ImageNet-style ResNet-{depth} with torchvision's keys (see the module docstring)."

    register_alias(f"resnet-{depth}_pretrained", f"resnet-{depth}", pretrained="true", head="1", seed="438")


for _depth in _LAYERS:
    _register(_depth)
