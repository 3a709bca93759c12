"""RegNetX-200MF (Radosavovic et al. 2020), CIFAR variant (stride-1 stem), GroupNorm.

Stages: widths (24, 56, 152, 368), depths (1, 1, 4, 7), group width 8,
bottleneck ratio 1, stride 2 at the start of each stage except the first.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(4 if c % 4 == 0 else 1, c)


class XBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, group_width: int):
        super().__init__()
        groups = max(1, cout // group_width)
        self.a = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), _norm(cout), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(cout, cout, 3, stride, 1, groups=groups, bias=False), _norm(cout), nn.ReLU())
        self.c = nn.Sequential(nn.Conv2d(cout, cout, 1, bias=False), _norm(cout))
        self.short = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(cout))

    def forward(self, x):
        return F.relu(self.c(self.b(self.a(x))) + self.short(x))


class RegNetX(nn.Module):
    def __init__(self, input_shape, num_classes, widths=(24, 56, 152, 368), depths=(1, 1, 4, 7),
                 group_width=8, stem=32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(input_shape[0], stem, 3, 1, 1, bias=False), _norm(stem), nn.ReLU())
        blocks, cin = [], stem
        for i, (w, d) in enumerate(zip(widths, depths)):
            for j in range(d):
                blocks.append(XBlock(cin, w, 2 if (j == 0 and i > 0) else 1, group_width))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))                            # (B, 368, H/8, W/8)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))   # (B, C)


def regnetx_200mf(input_shape: tuple[int, ...], num_classes: int) -> RegNetX:
    return RegNetX(input_shape, num_classes)
