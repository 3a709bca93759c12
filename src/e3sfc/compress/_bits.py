"""Bit packing for sign and level fields (little bit order within each byte)."""

from __future__ import annotations

import math

import numpy as np
import torch


def pack_bits(bits: torch.Tensor) -> np.ndarray:
    """(n,) bool -> (ceil(n/8),) uint8."""
    return np.packbits(bits.detach().cpu().numpy().astype(np.uint8), bitorder="little")


def unpack_bits(packed: np.ndarray, n: int) -> np.ndarray:
    """(ceil(n/8),) uint8 -> (n,) uint8 of 0/1."""
    return np.unpackbits(np.asarray(packed, dtype=np.uint8), count=n, bitorder="little")


def pack_uint(values: torch.Tensor, width: int) -> np.ndarray:
    """(n,) ints in [0, 2^width) -> ceil(n*width/8) bytes, ``width`` bits each."""
    v = values.detach().cpu().numpy().astype(np.uint32)
    bits = ((v[:, None] >> np.arange(width, dtype=np.uint32)) & 1).astype(np.uint8)  # (n, width)
    return np.packbits(bits.reshape(-1), bitorder="little")


def unpack_uint(packed: np.ndarray, n: int, width: int) -> np.ndarray:
    bits = np.unpackbits(np.asarray(packed, dtype=np.uint8), count=n * width, bitorder="little")
    return (bits.reshape(n, width).astype(np.uint32) << np.arange(width, dtype=np.uint32)).sum(1)


def nbytes(nbits: int) -> int:
    return (nbits + 7) // 8


# ---------------------------------------------------------------- 8-bit values with one scale
def quantize8(v: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Symmetric 8-bit: q = round(v / s) in -127..127 with s = max|v| / 127 (float32), sent as q + 128."""
    top = float(v.abs().max()) if v.numel() else 0.0
    s = float(np.float32(top / 127.0)) if top > 0 and math.isfinite(top) else 1.0
    q = torch.clamp(torch.round(v.double() / s), -127, 127).to(torch.int16) + 128
    return q.to(torch.uint8), s


def dequantize8(q: torch.Tensor, s: float, dtype: torch.dtype) -> torch.Tensor:
    return (q.to(torch.int16) - 128).to(dtype) * s


# ---------------------------------------------------------------- 4-bit values with one scale, two a byte
def quantize4(v: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Symmetric 4-bit rows: v (m, n) -> (m, ceil(n / 2)) uint8 and s = max|v| / 7 (float32): q = round(v / s)
    in -7..7 sent as q + 8 (1..15), entry 2j of a row in the low nibble of byte j, entry 2j + 1 in the high
    one; an odd row's last high nibble is 0."""
    top = float(v.abs().max()) if v.numel() else 0.0
    s = float(np.float32(top / 7.0)) if top > 0 and math.isfinite(top) else 1.0
    q = (torch.clamp(torch.round(v.double() / s), -7, 7).to(torch.int16) + 8).to(torch.uint8)
    if q.shape[1] % 2:
        q = torch.cat([q, q.new_zeros(q.shape[0], 1)], 1)
    return q[:, 0::2] | (q[:, 1::2] << 4), s


def dequantize4(packed: torch.Tensor, n: int, s: float, dtype: torch.dtype) -> torch.Tensor:
    """(m, ceil(n / 2)) uint8 from :func:`quantize4` -> (m, n) values (nibble - 8) * s."""
    q = torch.stack([packed & 15, packed >> 4], 2).reshape(packed.shape[0], -1)[:, :n]
    return (q.to(torch.int16) - 8).to(dtype) * s


# ---------------------------------------------------------------- Golomb-Rice coded positions
# Sorted distinct positions 0 <= p_0 < ... < p_{K-1} < P become gaps d_i = p_i - p_{i-1} - 1 >= 0
# (p_{-1} = -1); each gap is unary(d >> b) (that many 1 bits, then a 0) followed by the b low bits of
# d, least significant first; the bits go into bytes in little bit order, the last byte padded with 0.
GOLOMB_MAX_B = 31


def golomb_gaps(positions: np.ndarray) -> np.ndarray:
    """Sorted distinct positions (K,) -> their gaps (K,) int64."""
    return np.diff(np.asarray(positions, dtype=np.int64), prepend=-1) - 1


def golomb_bits(gaps: np.ndarray, b: int) -> int:
    """Exact length in bits of the code of ``gaps`` with parameter ``b``."""
    return int((gaps >> b).sum()) + gaps.size * (1 + b)


def golomb_best_b(gaps: np.ndarray) -> int:
    """The b in 0..GOLOMB_MAX_B with the shortest code for these gaps (the smallest such b)."""
    costs = [golomb_bits(gaps, b) for b in range(GOLOMB_MAX_B + 1)]
    return int(np.argmin(costs))


def golomb_max_bits(k: int, p: int) -> int:
    """The most bits :func:`golomb_best_b`'s code of any K = ``k`` distinct positions in 0..p-1 takes:
    for every b, sum(d_i >> b) <= (sum d_i) >> b <= (p - k) >> b, so the best b's code is at most
    min over b of k (1 + b) + ((p - k) >> b)."""
    return min(k * (1 + b) + ((p - k) >> b) for b in range(GOLOMB_MAX_B + 1))


def golomb_encode(gaps: np.ndarray, b: int) -> np.ndarray:
    """Gaps (K,) >= 0 -> the code, ceil(golomb_bits / 8) bytes (vectorized: no loop over the gaps)."""
    gaps = np.asarray(gaps, dtype=np.int64)
    q = gaps >> b
    lens = q + 1 + b
    ends = np.cumsum(lens)
    starts = ends - lens
    n = int(ends[-1]) if gaps.size else 0
    mark = np.zeros(n + 1, np.int8)          # +1 where a run of unary ones starts, -1 at its terminating 0
    mark[starts] += 1                        # (each index list is distinct, so += is safe)
    mark[starts + q] -= 1
    bits = np.cumsum(mark[:n], dtype=np.int8).astype(np.uint8)
    if b and gaps.size:
        j = np.arange(b, dtype=np.int64)
        bits[(starts + q + 1)[:, None] + j] = ((gaps & ((1 << b) - 1))[:, None] >> j) & 1
    return np.packbits(bits, bitorder="little")


def golomb_decode(code: np.ndarray, k: int, b: int, p: int) -> np.ndarray:
    """The code of ``k`` positions in 0..p-1 -> the positions (k,) int64, sorted and distinct; a
    PayloadError for b outside 0..GOLOMB_MAX_B, a code that ends before k gaps, anything after the
    k-th gap but zero padding of the last byte, or gaps that run past p. Vectorized: the start of
    gap i is f^i(0), f mapping a code's start to the next one's, found for all i at once by pointer
    doubling (log2 k passes over the bits)."""
    from ..errors import PayloadError

    if not 0 <= b <= GOLOMB_MAX_B:
        raise PayloadError(f"golomb parameter b = {b} is outside 0..{GOLOMB_MAX_B}")
    code = np.asarray(code, dtype=np.uint8).reshape(-1)
    bits = np.unpackbits(code, bitorder="little")
    n = bits.size
    if k == 0:
        if code.size:
            raise PayloadError("golomb code has bytes after its 0 positions")
        return np.zeros(0, np.int64)
    bad = n + 1                                   # absorbing "ran off the end" state
    zeros = np.flatnonzero(bits == 0)
    nz = np.append(zeros, bad)[np.searchsorted(zeros, np.arange(n + 1))]   # first 0 at or after i
    f = np.append(nz + 1 + b, bad)
    f[f > n] = bad
    step = np.arange(k + 1)
    start = np.zeros(k + 1, np.int64)
    jump, j = f, 0
    while (1 << j) <= k:
        sel = ((step >> j) & 1).astype(bool)
        start[sel] = jump[start[sel]]
        jump = jump[jump]
        j += 1
    end = int(start[k])
    if end > n:
        raise PayloadError(f"golomb code ends before its {k} positions")
    if (end + 7) // 8 != code.size or bits[end:].any():
        raise PayloadError("golomb code has data after its last position")
    s = start[:k]
    t = nz[s]                                     # each gap's terminating 0
    gaps = (t - s) << b
    if b:
        w = np.arange(b, dtype=np.int64)
        gaps += (bits[(t + 1)[:, None] + w].astype(np.int64) << w).sum(1)
    if gaps.max() >= p:
        raise PayloadError(f"golomb gaps run past the update's {p} entries")
    pos = np.cumsum(gaps + 1) - 1
    if pos[-1] >= p:
        raise PayloadError(f"golomb gaps run past the update's {p} entries")
    return pos
