"""``topk``: keep the k largest-magnitude entries of the EF target (Aji & Heafield 2017;
Stich et al. 2018), with error feedback.

Scope ``tensor`` (default): k_i = max(1, floor(ratio * n_i)) per parameter tensor;
``global``: K = max(1, floor(ratio * P)) over the whole update.

Wire format: int32 indices (K,) into the flat update, float32 values (K,).
Size: 8 K + 17 bytes (header 5 + 2 x (2 + 4)). MLP, ratio 0.01 per tensor: K = 1,993, 15,961 bytes.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..wire import FieldSpec, Payload
from . import register
from .base import Compressor, Context, Option

# the options (base.Option; each a run setting, --topk-scope, unless setting=False)
OPTIONS = (
    Option("ratio", float, 0.01, "kept fraction", low=0, low_open=True, high=1,
           setting=False),  # the run setting --ratio is the run's (config.py): it may say match:METHOD
    Option("topk_scope", str, "tensor", "tensor (k per tensor) or global (K over the whole update)",
           choices=("tensor", "global")),
)


def topk_counts(shapes: list[tuple[int, ...]], ratio: float, scope: str) -> list[int]:
    sizes = [math.prod(s) for s in shapes]
    if scope == "global":
        return [max(1, min(sum(sizes), int(ratio * sum(sizes))))]
    return [max(1, min(n, int(ratio * n))) for n in sizes]


def topk_indices(v: torch.Tensor, shapes: list[tuple[int, ...]], ratio: float, scope: str) -> torch.Tensor:
    """Sorted flat indices of the kept entries."""
    counts = topk_counts(shapes, ratio, scope)
    if scope == "global":
        idx = v.abs().topk(counts[0], sorted=False).indices
    else:
        parts, off = [], 0
        for s, k in zip(shapes, counts):
            n = math.prod(s)
            parts.append(v[off:off + n].abs().topk(k, sorted=False).indices + off)
            off += n
        idx = torch.cat(parts)
    return idx.sort().values


@register
class TopK(Compressor):
    name = "topk"
    method_id = 2
    biased = True
    options = OPTIONS
    ratio: float
    topk_scope: str

    def k(self, ctx: Context) -> int:
        return sum(topk_counts(ctx.param_shapes, self.ratio, self.topk_scope))

    def fields(self, ctx: Context) -> list[FieldSpec]:
        k = self.k(ctx)
        return [FieldSpec(np.dtype("<i4"), (k,)), FieldSpec(np.dtype("<f4"), (k,))]

    def compress(self, target: torch.Tensor, ctx: Context) -> tuple[Payload, dict[str, float]]:
        idx = topk_indices(target, ctx.param_shapes, self.ratio, self.topk_scope)
        vals = target[idx].to(torch.float32)
        return Payload.of(self.method_id, idx.to(torch.int32), vals), {}

    def decompress(self, payload: Payload, ctx: Context) -> torch.Tensor:
        idx = _checked_indices(payload, ctx)
        out = torch.zeros(ctx.num_params, dtype=ctx.weights.dtype, device=ctx.device)
        out[idx] = payload.tensor(1, ctx.device).to(out.dtype)
        return out


def _checked_indices(payload: Payload, ctx: Context) -> torch.Tensor:
    from ..errors import PayloadError

    idx = payload.fields[0]
    if idx.size and (idx.min() < 0 or idx.max() >= ctx.num_params):
        raise PayloadError(f"payload indices outside 0..{ctx.num_params - 1}")
    return torch.from_numpy(idx.astype(np.int64)).to(ctx.device)
