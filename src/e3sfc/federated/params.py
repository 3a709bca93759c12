"""Flat parameter vectors: the one representation of weights and updates."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters


def get_flat(model: nn.Module) -> torch.Tensor:
    """(P,) copy of the model's parameters."""
    return parameters_to_vector(model.parameters()).detach().clone()


@torch.no_grad()
def set_flat(model: nn.Module, flat: torch.Tensor) -> None:
    """Load (P,) ``flat`` into the model's parameters (in place)."""
    vector_to_parameters(flat, model.parameters())
