"""Models from a registry (docs/design.md §1.5). None uses BatchNorm: per-sample statistics
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
from .text import TextBag, TextTransformer
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


# text models: built from (vocabulary size, classes, max_len); they take token ids (N, max_len)
_TEXT: dict[str, Callable[[int, int, int], nn.Module]] = {
    "textbag": lambda v, c, n: TextBag(v, c),
    "transformer": lambda v, c, n: TextTransformer(v, c, max_len=n),
}


def register_model(name: str, builder: Builder) -> None:
    """Make ``--model name`` build ``builder(input_shape, num_classes)`` (input_shape = (C, H, W)).
    The model must not use BatchNorm (see this module's docstring); 3SFC decodes through it."""
    if name in _REGISTRY or name in _TEXT:
        raise ValueError(f"model {name!r} is registered already")
    _REGISTRY[name] = builder


def available_models() -> tuple[str, ...]:
    return (*_REGISTRY, *_TEXT)


def synthetic_shape(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of one synthetic sample for ``model``: its ``synthetic_shape`` (text models: weights
    over the vocabulary) or, for image models, the input's."""
    return tuple(getattr(model, "synthetic_shape", input_shape))


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, seed: int,
                vocab_size: int = 0) -> nn.Module:
    """Build ``name`` with weights drawn from ``seed`` (global RNG state is left as it was).
    ``vocab_size`` > 0: the inputs are token ids (``input_shape`` = (max_len,)) for a text model."""
    if name not in _REGISTRY and name not in _TEXT:
        raise ConfigError(f"--model: {name!r} is not allowed; expected one of {', '.join(available_models())}")
    if name in _TEXT or vocab_size:
        if not (name in _TEXT and vocab_size):
            raise ConfigError(f"--model: {name!r} is not allowed; expected "
                              f"{'textbag or transformer for a text dataset' if vocab_size else 'an image model'} "
                              f"({'agnews, imdb, sogou' if name in _TEXT else 'image'} datasets go with "
                              f"{'textbag, transformer' if name in _TEXT else ', '.join(_REGISTRY)})")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return _TEXT[name](vocab_size, num_classes, int(input_shape[0]))
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
