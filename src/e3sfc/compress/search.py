"""Driving 3SFC searches: which form of the objective a model gets, and several searches at once.

:func:`cosine_match` picks the closed form of :mod:`.synth_mlp` for Linear/ReLU chains and the
autograd form of :mod:`.synth` otherwise. :func:`run_together` drives several searches (step
generators, see ``ThreeSFC.search``) to their ends and evaluates each turn's points of one
model in one batch; ``ThreeSFC.compress_many`` uses it for ``--batch-search``. This module
imports both forms; neither imports the other's driver (no import cycle).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .synth import CosineMatch, CosineMatchBatch, upsample
from .synth_mlp import MLPCosineMatch, MLPCosineMatchBatch, linear_relu_chain


def start(steps) -> tuple:
    """Advance a step generator to its first request: (generator, first request, None), or
    (generator, None, its result) when it ends without asking for any; what run_together takes."""
    try:
        return steps, next(steps), None
    except StopIteration as end:
        return steps, None, end.value


def run_together(started: dict) -> dict:
    """Drive several started step generators (``ThreeSFC.compress_steps`` and what wraps it) to
    their ends together. ``started`` maps a key to what :func:`start` returned for its generator.
    At each turn the pending points of objectives of one model are evaluated in one batch
    (:class:`.synth_mlp.MLPCosineMatchBatch` for the closed form, :class:`.synth.CosineMatchBatch` for
    the autograd form); any other point alone. Returns each generator's result by key."""
    batch_of = {MLPCosineMatch: MLPCosineMatchBatch, CosineMatch: CosineMatchBatch, Upsampled: UpsampledBatch}
    done = {k: v[2] for k, v in started.items() if v[1] is None}
    gens = {k: v[0] for k, v in started.items() if v[1] is not None}
    pending = {k: v[1] for k, v in started.items() if v[1] is not None}
    batches: dict[tuple, object] = {}
    while pending:
        answers, groups = {}, {}
        for k, (f, z) in pending.items():
            if type(f) in batch_of:
                groups.setdefault((type(f), f.key), []).append(k)
            else:
                answers[k] = f(z)
        kept = {}
        for ks in groups.values():
            if len(ks) == 1:
                f, z = pending[ks[0]]
                answers[ks[0]] = f(z)
                continue
            ids = tuple(id(pending[k][0]) for k in ks)
            # who is still searching changed: build (stack the targets of) the batch again
            batch = kept[ids] = batches.get(ids) or batch_of[type(pending[ks[0]][0])]([pending[k][0] for k in ks])
            answers.update(zip(ks, batch([pending[k][1] for k in ks])))
        batches = kept
        for k, a in answers.items():
            try:
                pending[k] = gens[k].send(a)
            except StopIteration as end:
                del pending[k]
                done[k] = end.value
    return done


class Upsampled:
    """An objective of full-size inputs x (:class:`.synth_mlp.MLPCosineMatch`) searched over low-resolution
    z (``--feature-res``): x = :func:`.synth.upsample` (z_x, size), the same x every decoder computes;
    f(z) = inner(x, y) + lambda (||z_x|| + ||y||) and df/dz_x = U^T df/dx, U^T the upsampling's adjoint
    (its backward). The regulariser acts on z, as in :class:`.synth.CosineMatch` with ``size``. Same
    interface (``split`` gives z's own shapes, ``tau_norm``, call -> (f, |cos|, df/dz))."""

    def __init__(self, inner: MLPCosineMatch, z_shape: tuple[int, ...], size: tuple[int, int], lambd: float = 0.0):
        self.inner, self.x_shape, self.size, self.lambd = inner, z_shape, tuple(size), lambd
        self.y_shape, self.tau_norm = inner.y_shape, inner.tau_norm
        self.nx = math.prod(z_shape)
        self.key = (inner.key, z_shape, self.size, lambd)

    def split(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return z[:self.nx].view(self.x_shape), z[self.nx:].view(self.y_shape)

    def lift(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z_x with a graph to x, x, the inner objective's point: x and y flat)."""
        zx = z[:self.nx].view(self.x_shape).detach().requires_grad_(True)
        with torch.enable_grad():
            x = upsample(zx, self.size)
        return zx, x, torch.cat([x.detach().reshape(-1), z[self.nx:]])

    def finish(self, z: torch.Tensor, zx: torch.Tensor, x: torch.Tensor,
               inner: tuple[float, float, torch.Tensor]) -> tuple[float, float, torch.Tensor]:
        """The inner (f, |cos|, df/d(x, y)) carried back to z, with the regulariser on z."""
        obj, cos, g = inner
        nx = x.numel()
        (dzx,) = torch.autograd.grad(x, zx, g[:nx].view_as(x))
        dzx, dy = dzx.reshape(-1), g[nx:]
        if self.lambd:
            xn, yn = float(zx.detach().norm()), float(z[self.nx:].norm())
            obj += self.lambd * (xn + yn)
            if xn > 0:
                dzx = dzx.add(zx.detach().reshape(-1), alpha=self.lambd / xn)
            if yn > 0:
                dy = dy.add(z[self.nx:], alpha=self.lambd / yn)
        return obj, cos, torch.cat([dzx, dy])

    def __call__(self, z: torch.Tensor) -> tuple[float, float, torch.Tensor]:
        zx, x, point = self.lift(z)
        return self.finish(z, zx, x, self.inner(point))


class UpsampledBatch:
    """Several :class:`Upsampled` objectives with one key: their inner objectives in one batch
    (:class:`.synth_mlp.MLPCosineMatchBatch`), each carried back to its own z."""

    def __init__(self, fs: list[Upsampled]):
        if any(f.key != fs[0].key for f in fs):
            raise ValueError("UpsampledBatch: objectives of different models, shapes or lambdas")
        self.fs, self.inner = fs, MLPCosineMatchBatch([f.inner for f in fs])

    def __call__(self, zs: list[torch.Tensor]) -> list[tuple[float, float, torch.Tensor]]:
        lifted = [f.lift(z) for f, z in zip(self.fs, zs)]
        outs = self.inner([point for _, _, point in lifted])
        return [f.finish(z, zx, x, out) for f, z, (zx, x, _), out in zip(self.fs, zs, lifted, outs)]


def cosine_match(model: nn.Module, target: torch.Tensor, x_shape: tuple[int, ...], y_shape: tuple[int, ...],
                 lambd: float = 0.0, per_tensor: bool = False, size: tuple[int, int] | None = None):
    """The 3SFC objective for ``model``: the closed form of :mod:`.synth_mlp` when the model is a
    Linear/ReLU chain (same value and gradient, about 3x cheaper), else :class:`CosineMatch`;
    ``per_tensor``: the objective of one scale per parameter tensor; ``size``: the search runs over
    z of ``x_shape`` and the model sees x = upsample(z, size) (``--feature-res``): the closed form then
    runs on x and :class:`Upsampled` carries its gradient back to z through the upsampling's adjoint."""
    lins = linear_relu_chain(model)
    if lins is None:
        return CosineMatch(model, target, x_shape, y_shape, lambd, per_tensor, size)
    if size is None:
        return MLPCosineMatch(lins, model, target, x_shape, y_shape, lambd, per_tensor)
    full = (*x_shape[:-2], *size)
    return Upsampled(MLPCosineMatch(lins, model, target, full, y_shape, 0.0, per_tensor), x_shape, size, lambd)


def closed_form(model: nn.Module) -> bool:
    """Whether :func:`cosine_match` gives ``model`` the closed form (with ``--feature-res``, through
    :class:`Upsampled`); else it takes the autograd form, about 3x slower an evaluation on the MLP."""
    return linear_relu_chain(model) is not None
