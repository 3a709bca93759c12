"""``stc``: sparse ternary compression (Sattler et al., 2019), with error feedback.

Top-k of the EF target by magnitude (scope as ``topk``), then the kept values
become mu * sign with mu = mean |kept value|.

Wire format: int32 indices (K,), packed sign bits (ceil(K/8),) uint8 (1 = positive),
float32 mu (). The paper Golomb-codes the positions; we send plain int32 indices.
Size: 4 K + ceil(K/8) + 4 bytes of data + 19 bytes of header.
"""

from __future__ import annotations

import numpy as np
import torch

from ..wire import FieldSpec, Payload
from . import register
from ._bits import nbytes, pack_bits, unpack_bits
from .base import Context
from .topk import TopK, _checked_indices, topk_indices


@register
class STC(TopK):
    name = "stc"
    method_id = 3
    biased = True

    def fields(self, ctx: Context) -> list[FieldSpec]:
        k = self.k(ctx)
        return [FieldSpec(np.dtype("<i4"), (k,)), FieldSpec(np.dtype("u1"), (nbytes(k),)),
                FieldSpec(np.dtype("<f4"), ())]

    def compress(self, target: torch.Tensor, ctx: Context) -> tuple[Payload, dict[str, float]]:
        idx = topk_indices(target, ctx.param_shapes, self.ratio, self.topk_scope)
        kept = target[idx]
        mu = float(kept.abs().mean())
        return Payload.of(self.method_id, idx.to(torch.int32), pack_bits(kept >= 0), np.float32(mu)), {}

    def decompress(self, payload: Payload, ctx: Context) -> torch.Tensor:
        idx = _checked_indices(payload, ctx)
        signs = torch.from_numpy(unpack_bits(payload.fields[1], idx.numel()).astype(np.float32)) * 2 - 1
        out = torch.zeros(ctx.num_params, dtype=ctx.weights.dtype, device=ctx.device)
        out[idx] = float(payload.fields[2]) * signs.to(ctx.device, out.dtype)
        return out

