"""Bit packing for sign and level fields (little bit order within each byte)."""

from __future__ import annotations

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
