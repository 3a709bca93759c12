"""``topk``: keep the k largest-magnitude entries of the EF target (Aji & Heafield 2017;
Stich et al. 2018), with error feedback.

Scope ``tensor`` (default): k_i = max(1, floor(ratio * n_i)) per parameter tensor;
``global``: K = max(1, floor(ratio * P)) over the whole update.

Wire format (the defaults, ``index_coding`` int32 and ``value_bits`` 32): int32 indices (K,) into
the flat update, float32 values (K,). Size: 8 K + 17 bytes (header 5 + 2 x (2 + 4)).
MLP, ratio 0.01 per tensor: K = 1,993, 15,961 bytes.

``index_coding`` golomb (the positions as in STC, Sattler et al. 2019): the sorted positions'
gaps d_i = p_i - p_{i-1} - 1 Golomb-Rice coded (:func:`._bits.golomb_encode`: unary d >> b, then
the b low bits), in place of the indices: b as u1 (), the code as u1 (n,). b is chosen per payload,
the one in 0..31 that gives this payload's gaps the shortest code (32 sums over the gaps), so never
longer than with the paper's b* = 1 + floor(log2(log(phi - 1) / log(1 - K/P))) (which assumes
geometric gaps), and the code of any K positions is at most ``golomb_max_bits(K, P)``: the code's
field is *variable* (its length in the wire header), the payload's size at most
:meth:`payload_bytes`, and the ledger counts each payload's real length. MLP, ratio 0.01 per
tensor: b = 6, about 2,100 code bytes for 7,972 of int32.

``value_bits``: the values as float32 (K,), float16 (K,) (clamped to +-65504) or 8-bit, u1 (K,)
and one float32 scale () (:func:`._bits.quantize8`); the residual keeps the rounding.

Byte budget (``max_bytes`` > 0, set by ``--ratio match:METHOD`` with golomb, as the coded size
depends on the positions): each payload keeps the largest K, on the path of ``topk_counts`` as the
ratio grows, whose exact encoded payload fits in ``max_bytes``, found by bisection on the ratio over
the real target. The kept sets are nested as the ratio grows, and adding a position never shortens
the code for any b (a gap d split in two: floor(d1/2^b) + floor(d2/2^b) >= floor(d/2^b) - 1, plus
1 + b bits), so the size never decreases in K and the bisection is exact. K is then sent first,
u4 (); the payload is at most ``max_bytes``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import wire
from ..errors import PayloadError
from ..wire import FieldSpec, Payload
from . import register
from ._bits import (dequantize8, golomb_best_b, golomb_bits, golomb_decode, golomb_encode, golomb_gaps,
                    golomb_max_bits, nbytes, quantize8)
from .base import VALUE_BITS, Compressor, Context, Option

I4, U4, U1, F4, F2 = (np.dtype(d) for d in ("<i4", "<u4", "u1", "<f4", "<f2"))

# the options (base.Option; each a run setting, --topk-scope, unless setting=False)
OPTIONS = (
    Option("ratio", float, 0.01, "kept fraction", low=0, low_open=True, high=1,
           setting=False),  # the run setting --ratio is the run's (config.py): it may say match:METHOD
    Option("topk_scope", str, "tensor", "tensor (k per tensor) or global (K over the whole update)",
           choices=("tensor", "global")),
    Option("index_coding", str, "int32", "positions on the wire: int32 (4 bytes each) or golomb (Golomb-Rice "
           "code of the gaps between sorted positions, its parameter chosen per payload)",
           choices=("int32", "golomb")),
    VALUE_BITS,
    Option("max_bytes", int, 0, "with golomb: each payload's byte budget, K chosen per payload to fill it "
           "(0: K from ratio); set by --ratio match:METHOD", low=0, setting=False),
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
    index_coding: str
    value_bits: int
    max_bytes: int

    def __init__(self, **values):
        super().__init__(**values)
        if self.max_bytes and self.index_coding != "golomb":
            raise ValueError("max_bytes: a byte budget needs index_coding golomb (int32 payloads have a fixed size)")

    def k(self, ctx: Context) -> int:
        return sum(topk_counts(ctx.param_shapes, self.ratio, self.topk_scope))

    @property
    def fixed_size(self) -> bool:
        return self.index_coding == "int32"

    # ---------------------------------------------------------------- wire fields
    def fields(self, ctx: Context) -> list[FieldSpec]:
        if self.max_bytes:  # K varies: every field that grows with it is bounded, the whole by max_bytes
            k = min(ctx.num_params, 8 * self.max_bytes)
            return [FieldSpec(U4, ()), *self._index_fields(ctx, k), *self._value_fields(k, True)]
        k = self.k(ctx)
        return [*self._index_fields(ctx, k), *self._value_fields(k, False)]

    def _index_fields(self, ctx: Context, k: int) -> list[FieldSpec]:
        if self.index_coding == "int32":
            return [FieldSpec(I4, (k,))]
        most = self.max_bytes or nbytes(golomb_max_bits(k, ctx.num_params))
        return [FieldSpec(U1, ()), FieldSpec(U1, (most,), variable=True)]

    def _value_fields(self, k: int, variable: bool) -> list[FieldSpec]:
        if self.value_bits == 8:
            return [FieldSpec(U1, (k,), variable), FieldSpec(F4, ())]
        return [FieldSpec(F4 if self.value_bits == 32 else F2, (k,), variable)]

    def payload_bytes(self, ctx: Context) -> int:
        """Exact for int32; with golomb the most a payload can be (``max_bytes`` under a byte budget)."""
        return self.max_bytes or super().payload_bytes(ctx)

    # ---------------------------------------------------------------- encode
    def compress(self, target: torch.Tensor, ctx: Context) -> tuple[Payload, dict[str, float]]:
        if self.max_bytes:
            return self._within_budget(target, ctx), {}
        idx = topk_indices(target, ctx.param_shapes, self.ratio, self.topk_scope)
        return Payload.of(self.method_id, *self._arrays(idx, target, ctx)), {}

    def _arrays(self, idx: torch.Tensor, target: torch.Tensor, ctx: Context) -> list:
        """The payload's fields for the kept positions ``idx`` (sorted)."""
        head = [np.uint32(idx.numel())] if self.max_bytes else []
        return [*head, *self._index_arrays(idx), *self._value_arrays(target[idx])]

    def _index_arrays(self, idx: torch.Tensor) -> list:
        if self.index_coding == "int32":
            return [idx.to(torch.int32)]
        gaps = golomb_gaps(idx.cpu().numpy())
        b = golomb_best_b(gaps)
        return [np.uint8(b), golomb_encode(gaps, b)]

    def _value_arrays(self, vals: torch.Tensor) -> list:
        if self.value_bits == 32:
            return [vals.to(torch.float32)]
        if self.value_bits == 16:
            big = torch.finfo(torch.float16).max  # no inf on the wire
            return [vals.clamp(-big, big).to(torch.float16)]
        q, s = quantize8(vals)
        return [q.cpu(), np.float32(s)]

    def _within_budget(self, target: torch.Tensor, ctx: Context) -> Payload:
        """The payload of the largest K (on the ratio's path) whose encoded payload fits in max_bytes."""
        shapes, scope = ctx.param_shapes, self.topk_scope
        sizes = [ctx.num_params] if scope == "global" else [math.prod(s) for s in shapes]
        # rank[i]: entry i's place, by decreasing magnitude, in its tensor (or in the update): the
        # entries kept with counts c are those whose rank is below their tensor's c
        mags = target.detach().abs().cpu().numpy()
        rank = np.empty(ctx.num_params, np.int64)
        off = 0
        for n in sizes:
            rank[off + np.argsort(-mags[off:off + n], kind="stable")] = np.arange(n)
            off += n
        seen: dict[tuple[int, ...], tuple[int, np.ndarray]] = {}

        def at(r: float) -> tuple[int, np.ndarray]:
            """(exact encoded size, kept positions) at ratio r"""
            counts = tuple(topk_counts(shapes, r, scope))
            if counts not in seen:
                idx = np.flatnonzero(rank < np.repeat(counts, sizes))
                gaps = golomb_gaps(idx)
                code = nbytes(golomb_bits(gaps, golomb_best_b(gaps)))
                specs = [FieldSpec(U4, ()), FieldSpec(U1, ()), FieldSpec(U1, (code,)),
                         *self._value_fields(idx.size, False)]
                seen[counts] = (wire.encoded_size(specs), idx)
            return seen[counts]

        lo, hi = 1.0 / ctx.num_params, 1.0
        if at(lo)[0] > self.max_bytes:
            raise ValueError(f"{self.name}: not even one position per tensor fits in {self.max_bytes} bytes")
        if at(hi)[0] > self.max_bytes:
            for _ in range(60):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if at(mid)[0] <= self.max_bytes else (lo, mid)
        else:
            lo = hi
        return Payload.of(self.method_id, *self._arrays(torch.from_numpy(at(lo)[1]).to(target.device), target, ctx))

    # ---------------------------------------------------------------- decode
    def decompress(self, payload: Payload, ctx: Context) -> torch.Tensor:
        idx, rest = self._positions(payload, ctx)
        out = torch.zeros(ctx.num_params, dtype=ctx.weights.dtype, device=ctx.device)
        out[idx] = self._values(rest, idx.numel(), ctx).to(out.dtype)
        return out

    def _positions(self, payload: Payload, ctx: Context) -> tuple[torch.Tensor, tuple[np.ndarray, ...]]:
        """The kept positions (checked) and the fields after them."""
        if self.index_coding == "int32":
            return _checked_indices(payload, ctx), payload.fields[1:]
        f, k = payload.fields, None
        if self.max_bytes:
            k, f = int(f[0]), f[1:]
            if not 1 <= k <= ctx.num_params:
                raise PayloadError(f"payload keeps {k} positions; expected 1..{ctx.num_params}")
        pos = golomb_decode(f[1], self.k(ctx) if k is None else k, int(f[0]), ctx.num_params)
        return torch.from_numpy(pos).to(ctx.device), f[2:]

    def _values(self, rest: tuple[np.ndarray, ...], k: int, ctx: Context) -> torch.Tensor:
        if rest[0].shape != (k,):
            raise PayloadError(f"payload has {rest[0].shape[0]} values for {k} positions")
        v = torch.from_numpy(np.array(rest[0])).to(ctx.device)
        if self.value_bits == 8:
            return dequantize8(v, float(rest[1]), ctx.weights.dtype)
        return v


def _checked_indices(payload: Payload, ctx: Context) -> torch.Tensor:
    idx = payload.fields[0]
    if idx.size and (idx.min() < 0 or idx.max() >= ctx.num_params):
        raise PayloadError(f"payload indices outside 0..{ctx.num_params - 1}")
    return torch.from_numpy(idx.astype(np.int64)).to(ctx.device)
