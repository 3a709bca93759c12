"""``qsgd``: unbiased stochastic quantisation to s levels (Alistarh et al., 2017).

For v with norm ||v||_2: l_i = floor(s |v_i| / ||v||), rounded up with probability
s |v_i| / ||v|| - l_i; sent value ||v|| sign(v_i) l_i / s. E[Q(v)] = v (tested).
Unbiased, so error feedback never applies to it (``biased = False``; ``--ef`` changes nothing here).

Wire format: float32 norm (), packed sign bits (ceil(P/8),), levels packed at
b = ceil(log2(s + 1)) bits each (ceil(P b / 8),) uint8.
Size: 4 + ceil(P/8) + ceil(P b/8) bytes of data + 19 bytes of header (MLP, s = 16: 149,432).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..wire import FieldSpec, Payload
from . import register
from ._bits import nbytes, pack_bits, pack_uint, unpack_bits, unpack_uint
from .base import Compressor, Context, Option

# the options (base.Option; each a run setting: --levels)
OPTIONS = (
    Option("levels", int, 16, "quantisation levels s", low=1, high=2**16 - 1),
)


@register
class QSGD(Compressor):
    name = "qsgd"
    method_id = 5
    biased = False
    options = OPTIONS
    levels: int

    def __init__(self, **options):
        super().__init__(**options)
        self.width = max(1, math.ceil(math.log2(self.levels + 1)))

    def fields(self, ctx: Context) -> list[FieldSpec]:
        p = ctx.num_params
        return [FieldSpec(np.dtype("<f4"), ()), FieldSpec(np.dtype("u1"), (nbytes(p),)),
                FieldSpec(np.dtype("u1"), (nbytes(p * self.width),))]

    def quantize(self, v: torch.Tensor, generator: torch.Generator | None) -> tuple[float, torch.Tensor]:
        norm = float(v.norm())
        if norm == 0.0:
            return 0.0, torch.zeros_like(v, dtype=torch.int64)
        xi = v.abs().double() / norm * self.levels
        low = xi.floor()
        u = torch.rand(v.shape, generator=generator, dtype=torch.float64).to(v.device)
        return norm, (low + (u < (xi - low)).double()).long().clamp_(0, self.levels)

    def compress(self, target: torch.Tensor, ctx: Context) -> tuple[Payload, dict[str, float]]:
        norm, levels = self.quantize(target, ctx.generator)
        return Payload.of(self.method_id, np.float32(norm), pack_bits(target >= 0),
                          pack_uint(levels, self.width)), {}

    def decompress(self, payload: Payload, ctx: Context) -> torch.Tensor:
        p = ctx.num_params
        from ..errors import PayloadError
        lv = unpack_uint(payload.fields[2], p, self.width)
        if lv.size and lv.max() > self.levels:
            raise PayloadError(f"payload levels exceed s = {self.levels}")
        sign = unpack_bits(payload.fields[1], p).astype(np.float32) * 2 - 1
        vals = float(payload.fields[0]) * sign * lv.astype(np.float32) / self.levels
        return torch.from_numpy(vals).to(ctx.device, ctx.weights.dtype)
