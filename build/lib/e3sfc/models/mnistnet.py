"""MnistNet: two 5x5 conv layers (32, 64) with max pooling, then FC 512 and FC C."""

from __future__ import annotations

from torch import nn

from ._util import flat_features, two_conv_pool


class MnistNet(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        self.features = two_conv_pool(input_shape[0], 32, 64)
        n = flat_features(self.features, input_shape)
        self.classifier = nn.Sequential(nn.Linear(n, 512), nn.ReLU(), nn.Linear(512, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))
