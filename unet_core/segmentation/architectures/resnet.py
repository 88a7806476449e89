"""ResNet encoders with torchvision's parameter names (``conv1``, ``bn1``, ``layer1..4``).

smp's ResNet encoders are torchvision's ResNet without ``fc``/``avgpool``, so their weights use
these names under ``encoder.``. torchvision itself does not import beside this torch, hence this
own implementation of the same computation: the v1.5 Bottleneck (stride on the 3x3 conv),
a 1x1 conv + BN ``downsample`` wherever the stride or width changes.
"""

from __future__ import annotations

import torch
from torch import nn

RESNET_LAYOUTS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}


def _downsample(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN and an identity or projected shortcut."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(cin, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, with BN and a shortcut."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(cin, planes * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetEncoder(nn.Module):
    """ResNet feature pyramid: ``[x, stem (1/2), layer1 (1/4), layer2 (1/8), layer3, layer4]``.

    All four layers exist whatever ``depth`` is (as in smp, so state dicts match); ``forward``
    returns the first ``depth + 1`` features.
    """

    def __init__(self, name: str = "resnet34", in_channels: int = 3, depth: int = 5) -> None:
        super().__init__()
        kind, counts = RESNET_LAYOUTS[name]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.depth = depth
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        cin = 64
        for index, (planes, count) in enumerate(zip((64, 128, 256, 512), counts, strict=True), start=1):
            blocks = []
            for b in range(count):
                stride = 2 if (b == 0 and index > 1) else 1
                blocks.append(block(cin, planes, stride))
                cin = planes * block.expansion
            setattr(self, f"layer{index}", nn.Sequential(*blocks))
        e = block.expansion
        self.out_channels = [in_channels, 64, 64 * e, 128 * e, 256 * e, 512 * e][: depth + 1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [x]
        if self.depth >= 1:
            x = self.relu(self.bn1(self.conv1(x)))
            features.append(x)
        stages = [lambda t: self.layer1(self.maxpool(t)), self.layer2, self.layer3, self.layer4]
        for stage in stages[: max(0, self.depth - 1)]:
            x = stage(x)
            features.append(x)
        return features
