"""``sign``: scaled sign with error feedback (Karimireddy et al., 2019, EF-SignSGD).

Sent: (||tau||_1 / d) * sign(tau), sign(0) taken as +1.

Wire format: packed sign bits (ceil(P/8),) uint8 (1 = non-negative), float32 scale ().
Size: ceil(P/8) + 4 bytes of data + 13 bytes of header. MLP: 24,906 + 13 = 24,919 bytes.
"""

from __future__ import annotations

import numpy as np
import torch

from ..wire import FieldSpec, Payload
from . import register
from ._bits import nbytes, pack_bits, unpack_bits
from .base import Compressor, Context


@register
class ScaledSign(Compressor):
    name = "sign"
    method_id = 4
    biased = True

    def fields(self, ctx: Context) -> list[FieldSpec]:
        return [FieldSpec(np.dtype("u1"), (nbytes(ctx.num_params),)), FieldSpec(np.dtype("<f4"), ())]

    def compress(self, target: torch.Tensor, ctx: Context) -> tuple[Payload, dict[str, float]]:
        scale = float(target.abs().sum()) / target.numel()
        return Payload.of(self.method_id, pack_bits(target >= 0), np.float32(scale)), {}

    def decompress(self, payload: Payload, ctx: Context) -> torch.Tensor:
        bits = torch.from_numpy(unpack_bits(payload.fields[0], ctx.num_params).astype(np.float32))
        return (float(payload.fields[1]) * (bits * 2 - 1)).to(ctx.device, ctx.weights.dtype)
