"""``powersgd``: rank-r compression by one power iteration a round, warm-started
(Vogels, Karimireddy & Jaggi, "PowerSGD: Practical low-rank gradient compression", NeurIPS 2019),
with error feedback.

Each parameter tensor of two or more dimensions is a matrix M (n x m): its first dimension by the
rest (a conv kernel (out, in, kh, kw) is out x in*kh*kw). With the sending party's Q (m x r) from
its last compression (the warm start; fresh N(0, 1) numbers from the round's generator the first
time), Algorithm 1 of the paper:

    P = M Q;  P <- orthogonalize(P) (Gram-Schmidt, columns in order);  Q = M^T P;  M ~ P Q^T

and the sender keeps Q for its next round. A matrix is compressed only if its factors are smaller
than it, r (n + m) < n m (which implies r < min(n, m)); the other matrices and every 1-D tensor
(biases) go as they are, in float32. Error feedback (:mod:`.ef`) makes the target e + Delta, and e
keeps what P Q^T left out.

Where it differs from the all-reduce original (torch's ``powerSGD_hook``), and why:
- No all-reduce: the sender ships both factors of its own EF target, P and Q, and the receiver
  decodes P Q^T. In the original every worker holds the same Q and the all-reduce of P and then of
  Q gives the factors of the *mean*; a server (or client) here has no shared Q to rely on, and a
  client that missed rounds could not rebuild one, so each payload stands alone: the receiver needs
  no state, and under a compressed downlink (``--downlink powersgd``) every replica decodes the same
  bytes to the same update (bit-identical replicas, as E-3SFC needs). It costs the Q factor on the
  wire, r m numbers per matrix, that the original's second all-reduce also sends.
- The warm start is the Q that was sent (as the receiver decodes it, so at 16 or 8 bits the rounded
  one), kept by the sending party alone (each client, and the server for its broadcasts):
  checkpointed, spilled with the rest of a client's state, checked on resume (:meth:`check_carry`).
  A warm-start column that is all zeros (a round whose target was zero there) is drawn afresh, or the
  power iteration would stay at zero for good.
- Gram-Schmidt as the hook's with ``orthogonalization_epsilon = 0``, except that a column of norm 0
  becomes 0 instead of NaN (the hook's advice for that case is a small epsilon, which would make P
  only nearly orthonormal and P Q^T not exactly the projection P P^T M).
- The factors can be rounded to 16 or 8 bits (``value_bits``; the original all-reduces them in the
  gradients' precision); Q = M^T P is computed from the P the receiver sees (rounded), and the
  residual from the factors as sent, so the EF identity stays exact.

Wire format: the factors of the compressed matrices, in parameter order, each P (n x r) then Q
(m x r) row-major, back to back in one field; the tensors sent as they are, flat and back to back, in
another (float32); at 8 bits a third field of float32 scales, (s_P, s_Q) per compressed matrix.
With F = r * sum over compressed matrices of (n_i + m_i) factor numbers, C compressed matrices and D
numbers sent as they are:

- 32 (default): factors (F,) float32, dense (D,) float32: 17 + 4 F + 4 D bytes;
- 16: factors (F,) float16 (saturating at +-65504): 17 + 2 F + 4 D bytes;
- 8: factors (F,) uint8 (symmetric, q = round(v / s) in -127..127 with s = max|v| / 127 per factor,
  sent as q + 128: 3SFC's 8-bit quantizer), dense (D,) float32, scales (2 C,) float32:
  23 + F + 8 C + 4 D bytes.

MLP (784-200-200-10, every weight compressed, D = 410 bias numbers): F = 1,594 r;
rank 1: 8,033 bytes at 32 bits, 3,281 at 8; rank 2: 14,409 at 32, 4,875 at 8 (dense: 796,851).

Rank: ``--rank r`` (>= 1); a rank that compresses no parameter matrix of the model (above
floor((n m - 1) / (n + m)) for every matrix) is refused when the compressor is built; a rank that
some matrices cannot take sends those as they are.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import ConfigError, PayloadError
from ..wire import FieldSpec, Payload
from . import register
from ._bits import dequantize8, quantize8
from .base import VALUE_BITS, Compressor, Context, Option

# the options (base.Option; each a run setting: --rank, --value-bits)
OPTIONS = (
    Option("rank", int, 2, "PowerSGD rank r per parameter matrix (matrices whose factors would not be "
           "smaller, and 1-D tensors, go as they are)", low=1),
    VALUE_BITS,
)


def max_rank(n: int, m: int) -> int:
    """The largest rank r whose factors are smaller than an n x m matrix: r (n + m) < n m."""
    return (n * m - 1) // (n + m)


def layout(shapes: list[tuple[int, ...]], rank: int) -> list[tuple[int, int, int, bool]]:
    """Per parameter tensor: (offset in the flat vector, n, m, compressed), M viewed as n x m."""
    out, off = [], 0
    for s in shapes:
        size = math.prod(s)
        n = s[0] if len(s) >= 2 else size
        m = size // n if len(s) >= 2 and n else 1
        out.append((off, n, m, len(s) >= 2 and rank <= max_rank(n, m)))
        off += size
    return out


def orthogonalize(p: torch.Tensor) -> torch.Tensor:
    """Gram-Schmidt on the columns of ``p`` (n x r), in order, in place as torch's hook does; a
    column of norm 0 becomes 0."""
    r = p.shape[1]
    for i in range(r):
        col = p[:, i:i + 1]
        norm = torch.linalg.vector_norm(col)
        if norm > 0:
            col /= norm
        else:
            col.zero_()
        if i + 1 < r:
            rest = p[:, i + 1:]
            rest -= (col * rest).sum(0, keepdim=True) * col
    return p


@register
class PowerSGD(Compressor):
    name = "powersgd"
    method_id = 8
    biased = True
    options = OPTIONS
    rank: int
    value_bits: int

    # ------------------------------------------------------------------ shapes
    def _plan(self, ctx: Context) -> list[tuple[int, int, int, bool]]:
        return layout(ctx.param_shapes, self.rank)

    def counts(self, ctx: Context) -> tuple[int, int, int]:
        """(F factor numbers, C compressed matrices, D numbers sent as they are)."""
        plan = self._plan(ctx)
        f = sum(self.rank * (n + m) for _, n, m, c in plan if c)
        d = sum(n * m for _, n, m, c in plan if not c)
        return f, sum(1 for *_, c in plan if c), d

    def carry_size(self, ctx: Context) -> int:
        """Numbers in a warm start: sum of m_i r over the compressed matrices."""
        return sum(self.rank * m for _, n, m, c in self._plan(ctx) if c)

    def check_context(self, ctx: Context) -> None:
        best = max((max_rank(n, m) for (_, n, m, _), s in zip(self._plan(ctx), ctx.param_shapes) if len(s) >= 2),
                   default=0)
        if self.rank > best:
            raise ConfigError(f"--rank: {self.rank} is not allowed; expected an integer in 1..{best} (a larger rank "
                              "compresses no parameter matrix of this model)" if best else
                              f"--rank: {self.rank} is not allowed; this model has no parameter matrix to compress")

    def fields(self, ctx: Context) -> list[FieldSpec]:
        f, c, d = self.counts(ctx)
        f4 = np.dtype("<f4")
        if self.value_bits == 8:
            return [FieldSpec(np.dtype("u1"), (f,)), FieldSpec(f4, (d,)), FieldSpec(f4, (2 * c,))]
        return [FieldSpec(f4 if self.value_bits == 32 else np.dtype("<f2"), (f,)), FieldSpec(f4, (d,))]

    # ------------------------------------------------------------------ encoder
    def _round(self, v: torch.Tensor) -> tuple[object, float | None, torch.Tensor]:
        """One factor at the wire's precision: (wire values, scale or None, the values as decoded)."""
        if self.value_bits == 32:
            w = v.float()
            return w, None, w.to(v.dtype)
        if self.value_bits == 16:
            big = torch.finfo(torch.float16).max  # no inf on the wire
            w = v.clamp(-big, big).half()
            return w, None, w.to(v.dtype)
        q, s = quantize8(v)
        return q, s, dequantize8(q, s, v.dtype)

    def _warm(self, ctx: Context, plan) -> list[torch.Tensor]:
        """Each compressed matrix's Q (m x r) to start from: the carried one, zero columns drawn afresh."""
        dt = ctx.weights.dtype
        start = ctx.start
        if start is not None and start.numel() != self.carry_size(ctx):
            start = None
        out, at = [], 0
        for _, n, m, c in plan:
            if not c:
                continue
            fresh = torch.randn((m, self.rank), generator=ctx.generator).to(ctx.device, dt)
            if start is None:
                out.append(fresh)
                continue
            q = start[at:at + m * self.rank].to(ctx.device, dt).reshape(m, self.rank)
            at += m * self.rank
            out.append(torch.where(torch.linalg.vector_norm(q, dim=0, keepdim=True) > 0, q, fresh))
        return out

    def compress(self, target: torch.Tensor, ctx: Context) -> tuple[Payload, dict[str, float]]:
        plan = self._plan(ctx)
        warm = iter(self._warm(ctx, plan))
        wire_f, scales, dense = [], [], []
        for off, n, m, c in plan:
            block = target[off:off + n * m]
            if not c:
                dense.append(block.float())
                continue
            mat = block.reshape(n, m)
            p = orthogonalize(mat @ next(warm))
            wp, sp, p = self._round(p)
            wq, sq, _ = self._round(mat.T @ p)
            wire_f += [wp.reshape(-1), wq.reshape(-1)]
            scales += [sp, sq]
        factors = torch.cat(wire_f) if wire_f else torch.zeros(0, dtype=_wire_dtype(self.value_bits))
        dense_t = torch.cat(dense) if dense else torch.zeros(0)
        if self.value_bits == 8:
            return Payload.of(self.method_id, factors, dense_t, np.array(scales, np.float32)), {}
        return Payload.of(self.method_id, factors, dense_t), {}

    # ------------------------------------------------------------------ decoder
    def factors(self, payload: Payload, ctx: Context) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(P, Q) of each compressed matrix as the receiver sees them (in ``ctx.weights``' dtype)."""
        dt = ctx.weights.dtype
        raw = payload.tensor(0, ctx.device)
        scales = payload.fields[2] if self.value_bits == 8 else None
        out, at, j = [], 0, 0
        for _, n, m, c in self._plan(ctx):
            if not c:
                continue
            pair = []
            for rows in (n, m):
                v = raw[at:at + rows * self.rank]
                at += rows * self.rank
                if scales is not None:
                    s = float(scales[j])
                    if not (math.isfinite(s) and s > 0):
                        raise PayloadError(f"payload scale {j} is {s}; expected a positive number")
                    v = dequantize8(v, s, dt)
                    j += 1
                pair.append(v.to(dt).reshape(rows, self.rank))
            out.append((pair[0], pair[1]))
        return out

    def decompress(self, payload: Payload, ctx: Context) -> torch.Tensor:
        dt = ctx.weights.dtype
        out = torch.empty(ctx.num_params, dtype=dt, device=ctx.device)
        pairs = iter(self.factors(payload, ctx))
        dense = payload.tensor(1, ctx.device).to(dt)
        at = 0
        for off, n, m, c in self._plan(ctx):
            if c:
                p, q = next(pairs)
                out[off:off + n * m] = (p @ q.T).reshape(-1)
            else:
                out[off:off + n * m] = dense[at:at + n * m]
                at += n * m
        return out

    # ------------------------------------------------------------------ warm start
    def carry(self, payload: Payload, ctx: Context) -> torch.Tensor | None:
        """The Q factors just sent (as decoded), flat float32: the next power iteration's start."""
        qs = [q.reshape(-1) for _, q in self.factors(payload, ctx)]
        return torch.cat(qs).to(torch.float32) if qs else None

    def check_carry(self, value, ctx: Context) -> None:
        want = self.carry_size(ctx)
        if not (isinstance(value, torch.Tensor) and value.dim() == 1 and value.is_floating_point()
                and value.numel() == want and bool(torch.isfinite(value).all())):
            raise ValueError(f"a warm start is {getattr(value, 'shape', type(value).__name__)}; expected "
                             f"{want} finite numbers (the Q factors at rank {self.rank})")


def _wire_dtype(bits: int) -> torch.dtype:
    return {32: torch.float32, 16: torch.float16, 8: torch.uint8}[bits]
