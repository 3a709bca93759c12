"""Models from a registry (docs/design.md §1.5). None uses BatchNorm: per-sample statistics
only (GroupNorm), so a model's output for a sample never depends on its batch,
which 3SFC's decoder and FL on non-IID data both need. A model with BatchNorm is refused by the
methods that decode through the model (:func:`check_decoder`, asked by ``build_compressor`` and the
Flower add-on); :func:`batchnorm_to_groupnorm` converts one.

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
from .quickcnn import QuickCNN
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
    "quickcnn": QuickCNN,
    "resnet18": resnet18,
    "vgg11": vgg11,
    "regnet": regnetx_200mf,
}


# text models: built from (vocabulary size, classes, max_len); they take token ids (N, max_len)
_TEXT: dict[str, Callable[[int, int, int], nn.Module]] = {
    "textbag": lambda v, c, n: TextBag(v, c),
    "transformer": lambda v, c, n: TextTransformer(v, c, max_len=n),
}


# the models e3sfc builds itself (register_model adds others: BUILTIN_MODELS never holds them)
BUILTIN_MODELS = (*_REGISTRY, *_TEXT)


def register_model(name: str, builder: Builder) -> None:
    """Make ``--model name`` build ``builder(input_shape, num_classes)`` (input_shape = (C, H, W)).
    A model with BatchNorm is refused by the synthesis methods (3sfc, e3sfc, fedsynth), which decode
    through it (:func:`check_decoder`); wrap the builder with :func:`batchnorm_to_groupnorm`."""
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


def has_batchnorm(model: nn.Module) -> bool:
    """Whether any module of ``model`` is a BatchNorm (1d, 2d, 3d, lazy or synchronised)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def check_decoder(model: nn.Module, method: str) -> None:
    """A one-line ConfigError when ``model`` has BatchNorm and ``method`` decodes through the model
    (3sfc, e3sfc, fedsynth: the update is the gradient of the model at w_t on the synthetic samples)."""
    if has_batchnorm(model):
        raise ConfigError(
            f"--model: {type(model).__name__} has BatchNorm, which --method {method} cannot decode through: "
            "the update is decoded as the model's gradient in eval mode, where BatchNorm normalises with running "
            "statistics that each party gathers from its own data and that are never sent, so sender and "
            "receiver would decode different updates; convert it with e3sfc.models.batchnorm_to_groupnorm(model) "
            "or use a method that does not decode through the model (topk, stc, sign, qsgd, powersgd, fedavg)")


def batchnorm_to_groupnorm(model: nn.Module, groups: int = 32) -> nn.Module:
    """``model`` with every BatchNorm replaced, in place, by a GroupNorm over the same channels, its affine
    weight and bias copied (same parameters, same count, same names; the running statistics dropped):
    BatchNorm2d/3d by the largest divisor of the channel count that is at most ``groups`` groups (Wu and
    He's 32), BatchNorm1d by one group (it often follows a Linear layer, where a group of one feature
    would normalise it to 0: one group is LayerNorm with a per-feature affine). Per-sample statistics: a
    sample's output no longer depends on its batch or on statistics a party keeps, so the synthesis
    methods can decode through it. Returns ``model``."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            c = child.num_features
            one_d = isinstance(child, nn.BatchNorm1d | nn.LazyBatchNorm1d)
            g = 1 if one_d else max(d for d in range(1, min(groups, c) + 1) if c % d == 0)
            gn = nn.GroupNorm(g, c, eps=child.eps, affine=child.affine)
            if child.affine:
                gn = gn.to(device=child.weight.device, dtype=child.weight.dtype)
                with torch.no_grad():
                    gn.weight.copy_(child.weight)
                    gn.bias.copy_(child.bias)
            setattr(model, name, gn)
        else:
            batchnorm_to_groupnorm(child, groups)
    return model


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
