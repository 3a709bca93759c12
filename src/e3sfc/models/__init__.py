"""Models from a registry (DESIGN 1.5). None uses BatchNorm: per-sample statistics
only (GroupNorm), so a model's output for a sample never depends on its batch,
which 3SFC's decoder and FL on non-IID data both need.

Every builder takes ``(input_shape, num_classes)`` with ``input_shape = (C, H, W)``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..errors import ConfigError
from .convnet import AuthorsConvNet, ConvNet
from .lenet import LeNet5
from .mlp import MLP
from .mnistnet import MnistNet
from .regnet import regnetx_200mf
from .resnet import resnet18
from .vgg import vgg11

Builder = Callable[[tuple[int, ...], int], nn.Module]

_REGISTRY: dict[str, Builder] = {
    "mlp": MLP,
    "mnistnet": MnistNet,
    "convnet": AuthorsConvNet,
    "convnet-fast": ConvNet,
    "lenet": LeNet5,
    "resnet18": resnet18,
    "vgg11": vgg11,
    "regnet": regnetx_200mf,
}


def available_models() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, seed: int) -> nn.Module:
    """Build ``name`` with weights drawn from ``seed`` (global RNG state is left as it was)."""
    if name not in _REGISTRY:
        raise ConfigError(f"--model: {name!r} is not allowed; expected one of {', '.join(_REGISTRY)}")
    if len(input_shape) != 3:
        raise ConfigError(f"--model: input shape must be (C, H, W), got {tuple(input_shape)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return _REGISTRY[name](tuple(input_shape), num_classes)
        except (ValueError, RuntimeError) as exc:  # e.g. too small for its pooling stages
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"--model: {name!r} cannot take inputs of shape {tuple(input_shape)} ({first}); "
                              f"expected a model suited to these inputs, e.g. mlp") from None


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
