"""MLP 784-200-200-C of the 3SFC paper (any input shape, flattened)."""

from __future__ import annotations

import math

from torch import nn


class MLP(nn.Sequential):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 200):
        d = math.prod(input_shape)
        super().__init__(
            nn.Flatten(),                                # (B, d)
            nn.Linear(d, hidden), nn.ReLU(),             # (B, 200)
            nn.Linear(hidden, hidden), nn.ReLU(),        # (B, 200)
            nn.Linear(hidden, num_classes),              # (B, C)
        )
