"""Flat parameter vectors: the one representation of weights and updates."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parameters_to_vector


def get_flat(model: nn.Module) -> torch.Tensor:
    """(P,) copy of the model's parameters."""
    return parameters_to_vector(model.parameters()).detach().clone()


@torch.no_grad()
def set_flat(model: nn.Module, flat: torch.Tensor) -> None:
    """Copy (P,) ``flat`` into the model's parameters.

    (``torch.nn.utils.vector_to_parameters`` would make the parameters views of
    ``flat``, so that training the model silently rewrites ``flat``.)
    """
    offset = 0
    for p in model.parameters():
        n = p.numel()
        p.copy_(flat[offset:offset + n].view_as(p))
        offset += n
    if offset != flat.numel():
        raise ValueError(f"flat vector has {flat.numel()} values, the model {offset}")
