"""``stc``: sparse ternary compression (Sattler et al., 2019), with error feedback.

Top-k of the EF target by magnitude (scope as ``topk``), then the kept values
become mu * sign with mu = mean |kept value|.

Wire format: the positions as ``topk`` sends them (``index_coding`` int32: int32 indices (K,);
golomb, as in the paper: the Golomb-Rice code of their gaps, b u1 () and the code u1 (n,), n at
most its bound; under a byte budget K u4 () first), then packed sign bits (ceil(K/8),) uint8
(1 = positive) and float32 mu (). int32 size: 4 K + ceil(K/8) + 4 bytes of data + 19 bytes of header.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import PayloadError
from ..wire import FieldSpec
from . import register
from ._bits import nbytes, pack_bits, unpack_bits
from .base import VALUE_BITS, Context
from .topk import F4, OPTIONS, U1, TopK


@register
class STC(TopK):
    name = "stc"
    method_id = 3
    biased = True
    options = tuple(o for o in OPTIONS if o is not VALUE_BITS)  # the values are mu * sign

    def _value_fields(self, k: int, variable: bool) -> list[FieldSpec]:
        return [FieldSpec(U1, (nbytes(k),), variable), FieldSpec(F4, ())]

    def _value_arrays(self, vals: torch.Tensor) -> list:
        return [pack_bits(vals >= 0), np.float32(float(vals.abs().mean()))]

    def _values(self, rest: tuple[np.ndarray, ...], k: int, ctx: Context) -> torch.Tensor:
        if rest[0].shape != (nbytes(k),):
            raise PayloadError(f"payload has {rest[0].shape[0]} sign bytes for {k} positions")
        signs = torch.from_numpy(unpack_bits(rest[0], k).astype(np.float32)) * 2 - 1
        return float(rest[1]) * signs.to(ctx.device, ctx.weights.dtype)

