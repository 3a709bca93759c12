"""VGG-11, CIFAR variant without BatchNorm; pooling stops when the map is 1 wide."""

from __future__ import annotations

from torch import nn

CFG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, cfg=CFG11):
        super().__init__()
        c, h, _ = input_shape
        layers: list[nn.Module] = []
        for v in cfg:
            if v == "M":
                if h >= 2:
                    layers.append(nn.MaxPool2d(2))
                    h //= 2
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
                c = v
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]  # (B, 512)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


def vgg11(input_shape: tuple[int, ...], num_classes: int) -> VGG:
    return VGG(input_shape, num_classes)
