"""The server step, shared by every driver: decode, decompress, aggregate.

w_{t+1} = w_t + sum_k a_k * decoded_k with a_k = 1/|S| (uniform) or n_k / sum n
(sample-weighted). A payload that fails to decode is rejected with a logged
reason and the round goes on with the remaining clients.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..compress import Compressor, Context, ErrorFeedback
from ..errors import PayloadError
from .client import ClientUpdate

log = logging.getLogger(__name__)


@dataclass
class Aggregate:
    delta: torch.Tensor            # (P,) mean decoded update
    accepted: list[int]
    rejected: dict[int, str]


def server_step(
    ctx: Context,
    updates: list[ClientUpdate],
    compressor: Compressor,
    *,
    weighted: bool = False,
) -> Aggregate:
    """Decode every update at w_t (``ctx``) and average the accepted ones.

    Streaming: each decoded update is added to one running sum and dropped, so the
    server holds two model-sized tensors however many clients report (100 ResNet-18
    updates would otherwise be 4.5 GB at once)."""
    accepted: list[int] = []
    rejected: dict[int, str] = {}
    delta = torch.zeros_like(ctx.weights)
    total = 0.0
    for u in updates:
        try:
            payload = compressor.decode(u.blob, ctx)
            upd = compressor.decompress(payload, ctx)
            if not torch.isfinite(upd).all():
                raise PayloadError("decoded update is not finite")
        except PayloadError as exc:
            log.warning("round %d: rejected update of client %d: %s", ctx.round, u.client, exc)
            rejected[u.client] = str(exc)
            continue
        a = float(u.num_samples) if weighted else 1.0
        delta.add_(upd, alpha=a)
        total += a
        accepted.append(u.client)
    if total > 0:
        delta.div_(total)
    return Aggregate(delta, accepted, rejected)


@dataclass
class Broadcast:
    blob: bytes                    # what every client receives
    weights: torch.Tensor          # (P,) w_{t+1} = w_t + decoded, as every replica computes it
    stats: dict[str, float]


SERVER = -1  # the server's key in ErrorFeedback


def server_downlink(ctx: Context, delta: torch.Tensor, compressor: Compressor, ef: ErrorFeedback) -> Broadcast:
    """E-3SFC double-way compression (DESIGN 1.2): e_s <- e_s + Delta_s; compress e_s at w_t;
    e_s <- e_s - decoded. The server applies only what it sends (decoded from the blob,
    exactly as a client decodes it)."""
    target = ef.target(SERVER, delta)
    payload, stats = compressor.compress(target, ctx)
    blob = compressor.encode(payload)
    decoded = compressor.decompress(compressor.decode(blob, ctx), ctx)
    ef.update(SERVER, target, decoded)
    return Broadcast(blob, ctx.weights + decoded, stats)  # the same sum as apply_broadcast
