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
    """Decode every update at w_t (``ctx``) and average the accepted ones."""
    decoded: list[torch.Tensor] = []
    sizes: list[int] = []
    accepted: list[int] = []
    rejected: dict[int, str] = {}
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
        decoded.append(upd)
        sizes.append(u.num_samples)
        accepted.append(u.client)
    if not decoded:
        return Aggregate(torch.zeros_like(ctx.weights), accepted, rejected)
    if weighted:
        w = torch.tensor(sizes, dtype=ctx.weights.dtype, device=ctx.device)
        w = w / w.sum()
    else:
        w = torch.full((len(decoded),), 1.0 / len(decoded), dtype=ctx.weights.dtype, device=ctx.device)
    delta = torch.zeros_like(ctx.weights)
    for wi, d in zip(w, decoded):
        delta.add_(d, alpha=float(wi))
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
