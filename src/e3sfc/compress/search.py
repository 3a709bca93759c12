"""Driving 3SFC searches: which form of the objective a model gets, and several searches at once.

:func:`cosine_match` picks the closed form of :mod:`.synth_mlp` for Linear/ReLU chains and the
autograd form of :mod:`.synth` otherwise. :func:`run_together` drives several searches (step
generators, see ``ThreeSFC.search``) to their ends and evaluates each turn's points of one
model in one batch; ``ThreeSFC.compress_many`` uses it for ``--batch-search``. This module
imports both forms; neither imports the other's driver (no import cycle).
"""

from __future__ import annotations

import torch
from torch import nn

from .synth import CosineMatch, CosineMatchBatch
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
    batch_of = {MLPCosineMatch: MLPCosineMatchBatch, CosineMatch: CosineMatchBatch}
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


def cosine_match(model: nn.Module, target: torch.Tensor, x_shape: tuple[int, ...], y_shape: tuple[int, ...],
                 lambd: float = 0.0, per_tensor: bool = False, size: tuple[int, int] | None = None):
    """The 3SFC objective for ``model``: the closed form of :mod:`.synth_mlp` when the model is a
    Linear/ReLU chain (same value and gradient, about 3x cheaper), else :class:`CosineMatch`;
    ``per_tensor``: the objective of one scale per parameter tensor; ``size``: the search runs over
    z of ``x_shape`` and the model sees x = upsample(z, size) (``--feature-res``). The closed form is
    written for d/dx, so with ``size`` every model takes the autograd form, which differentiates
    through the upsampling (its adjoint) as well."""
    lins = linear_relu_chain(model) if size is None else None
    if lins is not None:
        return MLPCosineMatch(lins, model, target, x_shape, y_shape, lambd, per_tensor)
    return CosineMatch(model, target, x_shape, y_shape, lambd, per_tensor, size)


def closed_form(model: nn.Module, size: tuple[int, int] | None = None) -> bool:
    """Whether :func:`cosine_match` gives ``model`` (with upsampling to ``size``) the closed form; else
    it takes the autograd form, about 3x slower an evaluation on the MLP."""
    return size is None and linear_relu_chain(model) is not None
