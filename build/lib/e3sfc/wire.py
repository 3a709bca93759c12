"""The one wire format: a :class:`Payload` <-> bytes.

Layout (all integers little-endian)::

    magic    2 bytes  b"E3"
    version  u8       1
    method   u8       method id (see ``e3sfc.compress.METHOD_IDS``)
    nfields  u8
    per field: dtype u8, ndim u8, ndim x u32 dims
    then each field's raw little-endian data, in order

Header size = 5 + sum over fields of (2 + 4 * ndim) bytes. Every byte figure in
the ledger is ``len(encode(payload))``, so headers are counted.

``decode`` rejects a wrong magic/version/method, a truncated or oversized
buffer, unknown dtypes, shapes other than the expected ones (larger than the
expected maximum for a ``variable`` field: a coded field whose length only the
header says) and non-finite floats, always with a :class:`~e3sfc.errors.PayloadError` naming the problem.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .errors import PayloadError

MAGIC = b"E3"
VERSION = 1

DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),
    2: np.dtype("<f8"),
    3: np.dtype("<i4"),
    4: np.dtype("<i8"),
    5: np.dtype("u1"),
    6: np.dtype("<f2"),
    7: np.dtype("<u2"),
    8: np.dtype("<u4"),
}
_CODES = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class Payload:
    """What crosses the network: a method id and an ordered tuple of arrays."""

    method: int
    fields: tuple[np.ndarray, ...]

    @staticmethod
    def of(method: int, *arrays: np.ndarray | torch.Tensor) -> "Payload":
        out = []
        for a in arrays:
            if isinstance(a, torch.Tensor):
                a = a.detach().cpu().numpy()
            a = np.asarray(a)  # keeps 0-d scalars 0-d (ascontiguousarray would make them 1-d)
            out.append(a if a.flags.c_contiguous else np.ascontiguousarray(a))
        return Payload(method, tuple(out))

    def tensor(self, i: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.from_numpy(np.array(self.fields[i])).to(device)


@dataclass(frozen=True)
class FieldSpec:
    """One field's dtype and shape; ``variable``: the shape is the most the field may have (each
    dimension may be smaller, the header says how large), and sizes computed from it are maxima."""

    dtype: np.dtype
    shape: tuple[int, ...]
    variable: bool = False

    def admits(self, dtype: np.dtype, shape: tuple[int, ...]) -> bool:
        if str(np.dtype(dtype)) != str(np.dtype(self.dtype)) or len(shape) != len(self.shape):
            return False
        if self.variable:
            return all(a <= b for a, b in zip(shape, self.shape))
        return tuple(shape) == tuple(self.shape)


def header_size(shapes: Sequence[Sequence[int]]) -> int:
    return 5 + sum(2 + 4 * len(s) for s in shapes)


def encoded_size(specs: Sequence[FieldSpec]) -> int:
    """Exact ``len(encode(p))`` for a payload with these fields (with ``variable`` ones: the most it can be)."""
    return header_size([s.shape for s in specs]) + sum(math.prod(s.shape) * s.dtype.itemsize for s in specs)


def _le(dt: np.dtype) -> np.dtype:
    return dt.newbyteorder("<") if dt.itemsize > 1 else dt


def encode(p: Payload) -> bytes:
    if len(p.fields) > 255:
        raise PayloadError(f"payload has {len(p.fields)} fields; at most 255 allowed")
    parts = [MAGIC, struct.pack("<BBB", VERSION, p.method, len(p.fields))]
    body = []
    for a in p.fields:
        dt = _le(a.dtype)
        if dt not in _CODES:
            raise PayloadError(f"dtype {a.dtype} cannot go on the wire; allowed: {sorted(map(str, _CODES))}")
        parts.append(struct.pack(f"<BB{a.ndim}I", _CODES[dt], a.ndim, *a.shape))
        body.append(np.asarray(a, dtype=dt).tobytes())
    return b"".join(parts + body)


def decode(
    data: bytes,
    method: int | None = None,
    expect: Sequence[FieldSpec] | None = None,
    max_bytes: int | None = None,
    check_finite: bool = True,
) -> Payload:
    """Parse ``data``; check the method id and, when given, the exact field specs (and, unless
    ``check_finite`` is off, that every float is finite)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PayloadError(f"payload must be bytes, got {type(data).__name__}")
    data = bytes(data)
    n = len(data)
    if max_bytes is not None and n > max_bytes:
        raise PayloadError(f"payload is oversized: {n} bytes, at most {max_bytes} allowed")
    if n < 5:
        raise PayloadError(f"payload is truncated: {n} bytes, the header alone needs 5")
    if data[:2] != MAGIC:
        raise PayloadError(f"payload has bad magic {data[:2]!r}; expected {MAGIC!r}")
    version, mid, nfields = struct.unpack_from("<BBB", data, 2)
    if version != VERSION:
        raise PayloadError(f"payload has wire version {version}; this build reads version {VERSION}")
    if method is not None and mid != method:
        raise PayloadError(f"payload is for method id {mid}; expected {method}")
    off = 5
    heads = []
    for i in range(nfields):
        if off + 2 > n:
            raise PayloadError(f"payload is truncated in the header of field {i}")
        code, ndim = struct.unpack_from("<BB", data, off)
        off += 2
        if code not in DTYPES:
            raise PayloadError(f"payload field {i} has unknown dtype code {code}")
        if off + 4 * ndim > n:
            raise PayloadError(f"payload is truncated in the shape of field {i}")
        shape = struct.unpack_from(f"<{ndim}I", data, off)
        off += 4 * ndim
        heads.append((DTYPES[code], tuple(shape)))
    if expect is not None:
        if len(heads) != len(expect) or not all(e.admits(d, s) for e, (d, s) in zip(expect, heads)):
            got = [(str(d), s) for d, s in heads]
            want = [(str(np.dtype(s.dtype)), tuple(s.shape)) + (("at most",) if s.variable else ())
                    for s in expect]
            raise PayloadError(f"payload has fields {got}; expected {want}")
    need = off + sum(math.prod(s) * d.itemsize for d, s in heads)  # Python ints: no wrap-around
    if n < need:
        raise PayloadError(f"payload is truncated: {n} bytes, its header promises {need}")
    if n > need:
        raise PayloadError(f"payload is oversized: {n} bytes, its header promises {need}")
    fields = []
    for d, s in heads:
        count = math.prod(s)
        size = count * d.itemsize
        a = np.frombuffer(data, dtype=d, count=count, offset=off).reshape(s)
        off += size
        if check_finite and d.kind == "f" and not np.isfinite(a).all():
            raise PayloadError("payload holds non-finite values (NaN or inf)")
        fields.append(a.astype(d.newbyteorder("=")) if d.itemsize > 1 else a)
    return Payload(mid, tuple(fields))
