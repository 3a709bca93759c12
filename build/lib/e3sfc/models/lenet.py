"""LeNet-5 (LeCun et al. 1998) with ReLU and max pooling."""

from __future__ import annotations

from torch import nn

from ._util import flat_features, two_conv_pool


class LeNet5(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        self.features = two_conv_pool(input_shape[0], 6, 16)
        n = flat_features(self.features, input_shape)
        self.classifier = nn.Sequential(
            nn.Linear(n, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes)
        )

    def forward(self, x):
        return self.classifier(self.features(x))
