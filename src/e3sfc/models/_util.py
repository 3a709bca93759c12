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
