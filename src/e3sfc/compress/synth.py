"""Shared pieces of the feature-synthesis methods (3SFC, E-3SFC, FedSynth).

The decoder "model is the decompressor": g(x, y) = grad_w L(w_t; x, y) with the
soft-label cross-entropy L = mean_m -sum_c y_mc log softmax(f_w(x_m))_c
(DESIGN 1.1; y unconstrained). The model is used as it is (eval mode, at w_t)
and never modified: gradients are taken with ``torch.autograd.grad``, so no
``.grad`` field of a parameter is touched.
"""

from __future__ import annotations

import math

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


class CosineMatch:
    """The 3SFC objective on a flat z = (x, y):  f(z) = 1 - |cos(g(x, y), tau)| + lambda (||x|| + ||y||).

    Its gradient is taken in two passes rather than by differentiating f end to end:
    g = grad_w L(w; x, y) with a graph, then the scalars g.tau and g.g without one, then
    v = df/dg = -sign(cos) (tau / D - (g.tau) |tau| g / (D^2 |g|)), D = |g| |tau| + 1e-12,
    and one backward pass of g with ``grad_outputs = v`` gives df/dz = v^T dg/dz. Same
    value and gradient as autograd through cos (the chain rule, written out; tested),
    without the P-sized products that autograd would record and replay for the two dot
    products and the norm.
    """

    def __init__(self, model: nn.Module, target: torch.Tensor, x_shape: tuple[int, ...], y_shape: tuple[int, ...],
                 lambd: float = 0.0):
        self.model, self.lambd = model, lambd
        self.params = [p for p in model.parameters()]
        self.sizes = [p.numel() for p in self.params]
        self.tau = target.detach()
        self.tau_norm = float(self.tau.norm())
        self.x_shape, self.y_shape = x_shape, y_shape
        self.nx = math.prod(x_shape)

    def split(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return z[:self.nx].view(self.x_shape), z[self.nx:].view(self.y_shape)

    def __call__(self, z: torch.Tensor) -> tuple[float, float, torch.Tensor]:
        """(f(z), |cos|, df/dz)."""
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            x, y = self.split(z)
            gs = torch.autograd.grad(soft_ce(self.model, x, y), self.params, create_graph=True)
            with torch.no_grad():
                g = torch.cat([gi.reshape(-1) for gi in gs])
                gt, n = float(g @ self.tau), math.sqrt(float(g @ g))
                D = n * self.tau_norm + 1e-12
                cos = gt / D
                sgn = -math.copysign(1.0, cos) if cos != 0 else 0.0
                c2 = -sgn * gt * self.tau_norm / (D * D * n) if n > 0 else 0.0
                v = self.tau.mul(sgn / D).add_(g, alpha=c2)
                vs = [vi.view_as(p) for vi, p in zip(v.split(self.sizes), self.params)]
            obj = 1.0 - abs(cos)
            outs, grads = list(gs), vs
            if self.lambd:
                reg = self.lambd * (x.norm() + y.norm())
                obj += float(reg.detach())
                outs, grads = [*outs, reg], [*grads, torch.ones_like(reg)]
            (dz,) = torch.autograd.grad(outs, [z], grad_outputs=grads)
        return obj, abs(cos), dz


def cosine_match(model: nn.Module, target: torch.Tensor, x_shape: tuple[int, ...], y_shape: tuple[int, ...],
                 lambd: float = 0.0):
    """The 3SFC objective for ``model``: the closed form of :mod:`.synth_mlp` when the model is a
    Linear/ReLU chain (same value and gradient, about 3x cheaper), else :class:`CosineMatch`."""
    from .synth_mlp import MLPCosineMatch, linear_relu_chain

    lins = linear_relu_chain(model)
    if lins is not None:
        return MLPCosineMatch(lins, model, target, x_shape, y_shape, lambd)
    return CosineMatch(model, target, x_shape, y_shape, lambd)
