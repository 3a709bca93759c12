"""Two ConvNets of the dataset-distillation literature.

``convnet`` (:class:`AuthorsConvNet`) is the E-3SFC authors' model: 4 x [conv3x3(32, padding 2),
one GroupNorm(32, 32) module shared by the four blocks, ReLU, max-pool 2], then a linear
classifier on 3 x 3 x 32 = 288 features (31,018 parameters on 1x28x28 with 10 classes, 31,594 on
3x32x32). Their code builds it with 3 input channels always; here the input's channel count.

``convnet-fast`` (:class:`ConvNet`, the project's variant): 4 x [conv3x3(32, padding 1),
GroupNorm of its own, ReLU, avg-pool 2], then a linear classifier (28,650 parameters on 1x28x28).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ._util import flat_features


class AvgPool2x2(nn.Module):
    """``nn.AvgPool2d(2)`` computed as a depthwise 2x2 convolution with weights 1/4 and stride 2.

    Same function (floor mode, no padding; forward equal, tested), no parameters. On CPU
    torch's avg_pool2d and its backward took about a third of a ConvNet training step; the
    convolution form makes the step about 1.4x faster (measured, 1 thread, batch 64).
    """

    def forward(self, x):
        c = x.shape[1]
        return F.conv2d(x, x.new_full((c, 1, 2, 2), 0.25), stride=2, groups=c)


class AuthorsConvNet(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 32, depth: int = 4):
        super().__init__()
        c = input_shape[0]
        self.convs = nn.ModuleList([nn.Conv2d(c if i == 0 else width, width, 3, padding=2) for i in range(depth)])
        self.norm = nn.GroupNorm(width, width, affine=True)  # one module, used by every block
        self.pool = nn.MaxPool2d(2, 2)
        self.classifier = nn.Linear(width * self._side(input_shape[1], depth) * self._side(input_shape[2], depth),
                                    num_classes)

    @staticmethod
    def _side(n: int, depth: int) -> int:
        for _ in range(depth):
            n = (n + 2) // 2  # conv3x3 with padding 2 adds 2, max-pool 2 halves (floor)
        return n

    def forward(self, x):
        for conv in self.convs:
            x = self.pool(F.relu(self.norm(conv(x))))
        return self.classifier(x.flatten(1))


class ConvNet(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 32, depth: int = 4):
        super().__init__()
        c, h, _ = input_shape
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.GroupNorm(width, width, affine=True), nn.ReLU()]
            if h >= 2:
                layers.append(AvgPool2x2())  # (B, 32, h/2, w/2)
                h //= 2
            c = width
        layers.append(nn.Flatten())
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(flat_features(self.features, input_shape), num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))
