from __future__ import annotations

import torch
from torch import nn


def flat_features(body: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Number of features ``body`` produces for one input of ``input_shape``."""
    with torch.no_grad():
        return int(body(torch.zeros(1, *input_shape)).flatten(1).shape[1])


def pool_if(size: int) -> nn.Module:
    """2x2 max pooling while the feature map is at least 2 wide, else identity."""
    return nn.MaxPool2d(2) if size >= 2 else nn.Identity()


def two_conv_pool(c: int, c1: int, c2: int) -> nn.Sequential:
    """Two 5x5 convolutions (padding 2) with ReLU, each followed by 2x2 max pooling, then flatten:
    (B, c, H, W) -> (B, c2 * ceil(H/4) * ceil(W/4)) (LeNet-5's and MnistNet's feature extractor)."""
    return nn.Sequential(
        nn.Conv2d(c, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),    # (B, c1, H/2, W/2)
        nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),   # (B, c2, H/4, W/4)
        nn.Flatten(),
    )
