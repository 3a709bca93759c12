"""The client step, shared by every driver (in-process simulator, Flower).

Client k at round t: start from w_t, run E epochs of plain SGD (momentum 0)
with lr_k = lr * decay^n_k (n_k = times k trained before), giving
Delta_k = w_k - w_t; form the EF target tau = e_k + Delta_k (:func:`prepare_update`);
compress it (``Compressor.compress_many``, which may take several clients' targets
at once); serialize with the one wire format and update e_k <- tau - decoded
(:func:`finish_update`). :func:`client_step` is the three in a row for one client.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..compress import Compressor, Context, ErrorFeedback
from ..wire import Payload
from .params import get_flat, set_flat


@dataclass
class ClientUpdate:
    client: int
    blob: bytes                       # exactly what goes up the wire
    num_samples: int
    stats: dict[str, float] = field(default_factory=dict)


def local_train(
    model: nn.Module,
    start: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Plain SGD from ``start``; returns Delta = w_end - start (P,). ``start`` is not modified."""
    set_flat(model, start)
    model.train()
    params = [p for p in model.parameters()]
    n = x.shape[0]
    for _ in range(epochs):
        perm = torch.randperm(n, generator=generator).to(x.device)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                torch._foreach_add_(params, grads, alpha=-lr)
    return get_flat(model) - start


@dataclass
class Prepared:
    """A client's round up to compression: its context at w_t and the target to compress."""

    ctx: Context
    target: torch.Tensor              # EF target e_k + Delta_k (or Delta_k without EF)
    use_ef: bool
    num_samples: int
    train_seconds: float
    delta: torch.Tensor | None = None  # the true update Delta_k (in-process diagnostics; never sent)


def prepare_update(
    train_model: nn.Module,
    ctx: Context,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    compressor: Compressor,
    ef: ErrorFeedback,
    epochs: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    update_scale: float = 1.0,
) -> Prepared:
    """Train from w_t (``ctx.weights``) and form the target to compress. ``update_scale`` multiplies
    the trained update before EF (fault injection's ``scale`` adversary; 1 = honest)."""
    t0 = time.perf_counter()
    delta = local_train(train_model, ctx.weights, x, y, epochs=epochs, batch_size=batch_size,
                        lr=lr, generator=generator)
    if update_scale != 1.0:
        delta.mul_(update_scale)
    use_ef = ef.enabled and compressor.biased
    target = ef.target(ctx.client, delta) if use_ef else delta
    return Prepared(ctx, target, use_ef, int(x.shape[0]), time.perf_counter() - t0, delta)


def finish_update(p: Prepared, compressor: Compressor, ef: ErrorFeedback, payload: Payload, stats: dict,
                  compress_seconds: float = 0.0) -> ClientUpdate:
    """Serialize the compressed payload and update the EF residual: e_k <- target - decoded."""
    blob = compressor.encode(payload)
    if p.use_ef:
        decoded = compressor.decompress(payload, p.ctx)
        if not torch.isfinite(decoded).all():  # the server will reject it: nothing was sent, keep it all
            decoded = torch.zeros_like(decoded)
        ef.update(p.ctx.client, p.target, decoded)
    stats = {**stats, "train_seconds": p.train_seconds, "compress_seconds": compress_seconds}
    return ClientUpdate(p.ctx.client, blob, p.num_samples, stats)


def client_step(train_model: nn.Module, ctx: Context, x: torch.Tensor, y: torch.Tensor, *, compressor: Compressor,
                ef: ErrorFeedback, **train) -> ClientUpdate:
    """One client's whole round: train, compress (with EF) and serialize (``ctx.model`` stays at w_t)."""
    p = prepare_update(train_model, ctx, x, y, compressor=compressor, ef=ef, **train)
    t0 = time.perf_counter()
    payload, stats = compressor.compress_many([p.target], [p.ctx])[0]
    return finish_update(p, compressor, ef, payload, stats, time.perf_counter() - t0)
