"""The pieces of the client step, shared by every driver (in-process simulator, Flower apps,
the Flower add-on); :class:`~.runtime.ClientRuntime` puts them in order.

Client k at round t: start from w_t and train, giving Delta_k = w_k - w_t (ours:
:func:`local_train`, E epochs of plain SGD with momentum 0 and lr_k = lr * decay^n_k,
n_k = times k trained before; under the add-on, the app's own training); form the EF
target tau = e_k + Delta_k (:func:`ef_target`); compress it (``Compressor.compress_many``,
which may take several clients' targets at once); serialize with the one wire format and
update e_k <- tau - decoded (:func:`finish_update`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..compress import Compressor, Context, ErrorFeedback
from ..wire import Payload
from .params import get_flat, set_flat

log = logging.getLogger(__name__)


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


def ef_target(ctx: Context, delta: torch.Tensor, *, compressor: Compressor, ef: ErrorFeedback, num_samples: int,
              train_seconds: float = 0.0, update_scale: float = 1.0) -> Prepared:
    """The target to compress from a trained update ``delta`` at w_t (``ctx.weights``): e_k + Delta_k
    for a biased method with error feedback, else Delta_k. ``update_scale`` multiplies the update
    before EF (fault injection's ``scale`` adversary; 1 = honest)."""
    if update_scale != 1.0:
        delta.mul_(update_scale)
    use_ef = ef.enabled and compressor.biased
    target = ef.target(ctx.client, delta) if use_ef else delta
    return Prepared(ctx, target, use_ef, num_samples, train_seconds, delta)


def finish_update(p: Prepared, compressor: Compressor, ef: ErrorFeedback, payload: Payload, stats: dict,
                  compress_seconds: float = 0.0) -> ClientUpdate:
    """Serialize the compressed payload and update the EF residual: e_k <- target - decoded."""
    blob = compressor.encode(payload)
    if p.use_ef and not torch.isfinite(p.target).all():
        # a local training that diverged: the server rejects what it decodes to, and a residual that kept
        # it would spoil every later target of this client, so the residual starts again from zero
        log.warning("client %d: its update is not finite (did its local training diverge?); its "
                    "error-feedback residual is reset to zero", p.ctx.client)
        ef.update(p.ctx.client, torch.zeros_like(p.target), torch.zeros_like(p.target))
    elif p.use_ef:
        decoded = compressor.decompress(payload, p.ctx)
        if not torch.isfinite(decoded).all():  # the server will reject it: nothing was sent, keep it all
            decoded = torch.zeros_like(decoded)
        ef.update(p.ctx.client, p.target, decoded)
    stats = {**stats, "train_seconds": p.train_seconds, "compress_seconds": compress_seconds}
    return ClientUpdate(p.ctx.client, blob, p.num_samples, stats)
