"""``fedavg``: the identity compressor (dense float32 update).

Wire format: one float32 field of shape (P,).
Size: 4*P + 11 bytes (header 5 + field 2 + 4). MLP 784-200-200-10: 796,851 bytes.
"""

from __future__ import annotations

import numpy as np
import torch

from ..wire import FieldSpec, Payload
from .base import Compressor, Context
from . import register


@register
class Dense(Compressor):
    name = "fedavg"
    method_id = 0
    biased = False
    as_downlink = False   # the dense downlink is --downlink dense

    def compress(self, target: torch.Tensor, ctx: Context) -> tuple[Payload, dict[str, float]]:
        return Payload.of(self.method_id, target.to(torch.float32)), {"cosine": 1.0}

    def decompress(self, payload: Payload, ctx: Context) -> torch.Tensor:
        return payload.tensor(0, ctx.device)

    def fields(self, ctx: Context) -> list[FieldSpec]:
        return [FieldSpec(np.dtype("<f4"), (ctx.num_params,))]
