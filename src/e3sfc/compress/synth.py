"""Shared pieces of the feature-synthesis methods (3SFC, E-3SFC, FedSynth).

The decoder "model is the decompressor": g(x, y) = grad_w L(w_t; x, y) with the
soft-label cross-entropy L = mean_m -sum_c y_mc log softmax(f_w(x_m))_c
(DESIGN 1.1; y unconstrained). The model is used as it is (eval mode, at w_t)
and never modified: gradients are taken with ``torch.autograd.grad``, so no
``.grad`` field of a parameter is touched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def soft_ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L(w; x, y) = mean_m -sum_c y_mc log_softmax(f_w(x_m))_c ; x (M, *in), y (M, C)."""
    return -(y * F.log_softmax(model(x), dim=1)).sum(1).mean()


def synth_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """g(x, y) as one flat (P,) vector."""
    params = [p for p in model.parameters()]
    with torch.enable_grad():
        if not create_graph:
            x, y = x.detach(), y.detach()
        grads = torch.autograd.grad(soft_ce(model, x, y), params, create_graph=create_graph)
    return torch.cat([g.reshape(-1) for g in grads])


def ls_scale(g: torch.Tensor, target: torch.Tensor) -> float:
    """alpha = <g, tau> / ||g||^2 (least squares), 0 when the norm is 0 or the result is not finite."""
    gg = float(g.double().dot(g.double()))
    if gg == 0.0:
        return 0.0
    a = float(g.double().dot(target.double())) / gg
    return a if torch.isfinite(torch.tensor(a)) else 0.0
