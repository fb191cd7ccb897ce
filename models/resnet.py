"""ResNet v1.5 (stride in the bottleneck's 3x3) with torchvision's parameter names.

A torchvision ResNet ``state_dict`` loads into ours with ``strict=True`` and ours into
torchvision's, so ImageNet weights can be used without renaming anything.
"""
from __future__ import annotations

from typing import Any, Iterator

import torch
import torch.nn as nn
from torch import Tensor

HEADS = ("linear", "mlp")


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding, no bias (a BatchNorm follows)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution, no bias (a BatchNorm follows)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions plus the shortcut (ResNet18/34)."""

    expansion: int = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def zero_init_last(self) -> None:
        """Zero the last BN's scale so the residual branch starts as zero (block = identity)."""
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        identity = x

        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)

        out = self.conv2(out)
        out = self.bn2(out)

        if self.downsample is not None:
            identity = self.downsample(x)

        out += identity
        out = self.relu(out)
        return out


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride: ResNet v1.5), 1x1 expand x4, plus the shortcut."""

    expansion: int = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def zero_init_last(self) -> None:
        """Zero the last BN's scale so the residual branch starts as zero (block = identity)."""
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: Tensor) -> Tensor:
        identity = x

        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)

        out = self.conv2(out)
        out = self.bn2(out)
        out = self.relu(out)

        out = self.conv3(out)
        out = self.bn3(out)

        if self.downsample is not None:
            identity = self.downsample(x)

        out += identity
        out = self.relu(out)
        return out


def _make_head(in_features: int, num_classes: int, head: str, hidden: int, dropout: float) -> nn.Module:
    """The classifier on pooled features: a Linear, or Linear -> ReLU -> Dropout -> Linear."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if head == "linear":
        return nn.Linear(in_features, num_classes)
    if head == "mlp":
        return nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
    raise ValueError(f"unknown head {head!r}; choose one of: {', '.join(HEADS)}")


class GlobalAvgPool(nn.Module):
    """The mean over height and width, N x C x H x W -> N x C x 1 x 1 (torchvision: AdaptiveAvgPool2d((1, 1))).

    A plain mean because its gradient on CUDA is deterministic: adaptive_avg_pool2d_backward_cuda has
    no deterministic version, so with ``torch.use_deterministic_algorithms(True)`` (train.py
    --deterministic) every ResNet would stop at its first backward pass on a GPU.
    """

    def forward(self, x: Tensor) -> Tensor:
        return x.mean((2, 3), keepdim=True)


class ResNet(nn.Module):
    """Stem, four stages of residual blocks, global average pool and a classifier ``fc``."""

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: list[int], num_classes: int = 1000,
                 zero_init_residual: bool = False, head: str = "linear", hidden: int = 512,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = GlobalAvgPool()
        self.num_features = 512 * block.expansion  # channels of forward_features' output
        self.fc = _make_head(self.num_features, num_classes, head, hidden, dropout)
        self.backbone_frozen = False

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

        # Each block then starts as the identity, which helps large-batch training
        # (Goyal et al. 2017, https://arxiv.org/abs/1706.02677).
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    m.zero_init_last()

    def _make_layer(self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int,
                    stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )

        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes))
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Tensor:
        """Images (N x 3 x H x W) -> layer4's feature map (N x num_features x H/32 x W/32)."""
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)

        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        return x

    def forward_head(self, x: Tensor) -> Tensor:
        """Feature map (N x num_features x h x w) -> logits (N x num_classes)."""
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.fc(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int, head: str = "linear", hidden: int = 512,
                         dropout: float = 0.5) -> None:
        """Replace ``fc`` with a freshly initialised head (fine-tuning after loading weights)."""
        old = next(self.fc.parameters())
        self.fc = _make_head(self.num_features, num_classes, head, hidden, dropout)
        # The new head must live where the backbone does, or the next forward fails.
        self.fc.to(device=old.device, dtype=old.dtype)

    def freeze_backbone(self, frozen: bool = True) -> None:
        """Train only ``fc`` (True) or the whole network (False).

        A frozen backbone also keeps its BatchNorm running statistics: its modules stay in
        eval mode whenever the model is put in training mode.
        """
        self.backbone_frozen = frozen
        for p in self.backbone_parameters():
            p.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> "ResNet":
        super().train(mode)
        if mode and self.backbone_frozen:
            for name, child in self.named_children():
                if name != "fc":
                    child.eval()
        return self

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """The classifier's parameters (``fc.*``)."""
        return self.fc.parameters()

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter except the classifier's, in registration order."""
        return (p for name, p in self.named_parameters() if not name.startswith("fc."))


def _resnet(block: type[BasicBlock | Bottleneck], layers: list[int], num_classes: int, **options: Any) -> ResNet:
    return ResNet(block, layers, num_classes, **options)


def resnet18(num_classes: int = 1000, **options: Any) -> ResNet:
    """ResNet-18: BasicBlock x [2, 2, 2, 2]."""
    return _resnet(BasicBlock, [2, 2, 2, 2], num_classes, **options)


def resnet34(num_classes: int = 1000, **options: Any) -> ResNet:
    """ResNet-34: BasicBlock x [3, 4, 6, 3]."""
    return _resnet(BasicBlock, [3, 4, 6, 3], num_classes, **options)


def resnet50(num_classes: int = 1000, **options: Any) -> ResNet:
    """ResNet-50 v1.5: Bottleneck x [3, 4, 6, 3]."""
    return _resnet(Bottleneck, [3, 4, 6, 3], num_classes, **options)


def resnet101(num_classes: int = 1000, **options: Any) -> ResNet:
    """ResNet-101 v1.5: Bottleneck x [3, 4, 23, 3]."""
    return _resnet(Bottleneck, [3, 4, 23, 3], num_classes, **options)


def resnet152(num_classes: int = 1000, **options: Any) -> ResNet:
    """ResNet-152 v1.5: Bottleneck x [3, 8, 36, 3]."""
    return _resnet(Bottleneck, [3, 8, 36, 3], num_classes, **options)
