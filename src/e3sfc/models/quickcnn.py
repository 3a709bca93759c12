"""The CNN of Flower's quickstart-pytorch example: two 5x5 convolutions without padding (6 and 16
channels), each with ReLU and 2x2 max pooling, then 120 -> 84 -> classes. 62,006 parameters on
3x32x32 inputs with 10 classes: the model a Flower user brings first. With Fashion-MNIST padded to
3x32x32 (``--dataset fmnist-rgb32``) it stands in for CIFAR-sized inputs on a machine without CIFAR."""

from __future__ import annotations

from torch import nn

from ._util import flat_features


class QuickCNN(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(input_shape[0], 6, 5), nn.ReLU(), nn.MaxPool2d(2),   # (B, 6, (H-4)/2, (W-4)/2)
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),               # (B, 16, 5, 5) at 32x32
            nn.Flatten(),
        )
        n = flat_features(self.features, input_shape)
        self.classifier = nn.Sequential(
            nn.Linear(n, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes)
        )

    def forward(self, x):
        return self.classifier(self.features(x))
