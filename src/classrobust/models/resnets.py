"""Residual networks of adversarial-training papers: PreAct ResNet-18 (He et al. 2016,
arXiv:1603.05027) and WideResNet-34-10 (Zagoruyko & Komodakis 2016, arXiv:1605.07146), both with
pre-activation blocks. Input (N, C, H, W) normalised; output logits (N, K)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3; a 1x1 projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.shortcut = (nn.Conv2d(cin, cout, 1, stride, bias=False)
                         if stride != 1 or cin != cout else None)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = F.relu(self.bn2(out))
        if self.dropout:
            out = F.dropout(out, self.dropout, self.training)
        return self.conv2(out) + skip


class _Stages(nn.Module):
    def __init__(self, in_channels: int, stem: int, widths: list[int], blocks: list[int], strides: list[int],
                 num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False)
        layers, cin = [], stem
        for width, n, stride in zip(widths, blocks, strides):
            for i in range(n):
                layers.append(PreActBlock(cin, width, stride if i == 0 else 1, dropout))
                cin = width
        self.blocks = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        out = F.relu(self.bn(self.blocks(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def preact_resnet18(in_channels: int, num_classes: int) -> nn.Module:
    return _Stages(in_channels, 64, [64, 128, 256, 512], [2, 2, 2, 2], [1, 2, 2, 2], num_classes)


def wide_resnet(in_channels: int, num_classes: int, depth: int = 34, widen_factor: int = 10,
                dropout: float = 0.0) -> nn.Module:
    if (depth - 4) % 6:
        raise ValueError(f"WideResNet depth must be 6n + 4, got {depth}")
    n = (depth - 4) // 6
    return _Stages(in_channels, 16, [16 * widen_factor, 32 * widen_factor, 64 * widen_factor], [n, n, n],
                   [1, 2, 2], num_classes, dropout)
