"""MnistNet: two 5x5 conv layers (32, 64) with max pooling, then FC 512 and FC C."""

from __future__ import annotations

from torch import nn

from ._util import flat_features


class MnistNet(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        c = input_shape[0]
        self.features = nn.Sequential(
            nn.Conv2d(c, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),   # (B, 32, H/2, W/2)
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),  # (B, 64, H/4, W/4)
            nn.Flatten(),
        )
        n = flat_features(self.features, input_shape)
        self.classifier = nn.Sequential(nn.Linear(n, 512), nn.ReLU(), nn.Linear(512, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))
