"""The client step, shared by every driver (in-process simulator, Flower).

Client k at round t: start from w_t, run E epochs of plain SGD (momentum 0)
with lr_k = lr * decay^n_k (n_k = times k trained before), giving
Delta_k = w_k - w_t; form the EF target tau = e_k + Delta_k; compress it;
serialize with the one wire format; update e_k <- tau - decoded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..compress import Compressor, Context, ErrorFeedback
from ..compress.base import Steps, run_steps
from .params import get_flat, set_flat


@dataclass
class ClientUpdate:
    client: int
    blob: bytes                       # exactly what goes up the wire
    num_samples: int
    stats: dict[str, float] = field(default_factory=dict)


def client_lr(lr: float, decay: float, times_trained: int) -> float:
    """The reference code multiplies a client's lr by ``decay`` each time it trains."""
    return lr * decay ** times_trained


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


def client_step(train_model: nn.Module, ctx: Context, x: torch.Tensor, y: torch.Tensor, **kw) -> ClientUpdate:
    """Train, compress (with EF) and serialize one client's update. ``ctx.model`` stays at w_t."""
    return run_steps(client_step_steps(train_model, ctx, x, y, **kw))


def client_step_steps(
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
) -> Steps:
    """:func:`client_step` with the compressor's objective evaluations handed out
    (``Compressor.compress_steps``); returns the :class:`ClientUpdate`. ``update_scale`` multiplies
    the trained update before EF and compression (fault injection's ``scale`` adversary; 1 = honest)."""
    t0 = time.perf_counter()
    delta = local_train(train_model, ctx.weights, x, y, epochs=epochs, batch_size=batch_size,
                        lr=lr, generator=generator)
    if update_scale != 1.0:
        delta.mul_(update_scale)
    t1 = time.perf_counter()
    use_ef = ef.enabled and compressor.biased
    target = ef.target(ctx.client, delta) if use_ef else delta
    payload, stats = yield from compressor.compress_steps(target, ctx)
    blob = compressor.encode(payload)
    if use_ef:
        ef.update(ctx.client, target, compressor.decompress(payload, ctx))
    t2 = time.perf_counter()
    stats = {**stats, "train_seconds": t1 - t0, "compress_seconds": t2 - t1}
    return ClientUpdate(ctx.client, blob, int(x.shape[0]), stats)


def apply_broadcast(ctx: Context, blob: bytes, compressor: Compressor) -> torch.Tensor:
    """A replica's decode of a downlink broadcast: w + decompress(decode(blob)) at w = ``ctx.weights``.

    The server applies its own broadcast through this same function, so every
    replica that starts equal to the server model stays bit-identical (DESIGN 1.2).
    """
    return ctx.weights + compressor.decompress(compressor.decode(blob, ctx), ctx)
