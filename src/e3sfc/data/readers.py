"""Readers for the on-disk dataset formats, with one-line errors for bad files.

- IDX (MNIST, Fashion-MNIST, EMNIST), gzipped or raw.
- CIFAR-10/100 "python version" pickles.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import math
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError

log = logging.getLogger(__name__)

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"dataset file {path} is missing") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"dataset file {path} is corrupt or truncated ({exc})") from None


def _cache_path(path: Path) -> Path | None:
    """Where the decoded array of a gzipped IDX file is kept: the user cache, keyed by the file's
    name, size and modification time (None where the file cannot be read)."""
    from .sources import cache_dir

    try:
        st = path.stat()
    except OSError:
        return None
    return cache_dir() / "idx" / f"{path.name}-{st.st_size}-{st.st_mtime_ns}.npy"


def _digest(a: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(a).reshape(-1).view(np.uint8).data, digest_size=16).hexdigest()


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (``magic = 0 0 dtype ndim``, big-endian u32 dims, then data).

    A gzipped file's decoded array is cached (``<user cache>/idx``, a ``.npy`` read without pickle,
    its checksum in a sidecar checked on every read), so later runs skip the decompression; a cache
    entry that is unreadable or does not match its checksum is ignored and rewritten."""
    path = Path(path)
    cached = _cache_path(path) if path.suffix == ".gz" else None
    if cached is not None and cached.is_file():
        try:
            a = np.load(cached, allow_pickle=False)
            if _digest(a) == cached.with_suffix(".b2").read_text().strip():
                return a
            log.warning("ignoring the cached %s: its checksum does not match", cached)
        except (OSError, ValueError) as exc:
            log.warning("ignoring the unreadable cached %s (%s)", cached, exc)
    a = _decode_idx(path)
    if cached is not None:
        from ..io import atomic_write
        try:
            atomic_write(cached, lambda f: np.save(f, a, allow_pickle=False), mode="wb")
            atomic_write(cached.with_suffix(".b2"), lambda f: f.write(_digest(a)))
        except OSError as exc:  # a read-only cache only costs the next run the decompression
            log.info("could not cache %s (%s)", path, exc)
    return a


def _decode_idx(path: Path) -> np.ndarray:
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"dataset file {path} is not an IDX file (bad magic number)")
    dtype = _IDX_DTYPES[raw[2]]
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"dataset file {path} is truncated (incomplete IDX header)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = math.prod(dims) * dtype.itemsize  # Python ints: dimensions cannot wrap around
    got = len(raw) - header
    if got != expected:
        what = "truncated" if got < expected else "too long"
        raise DataError(
            f"dataset file {path} is {what}: header says {expected} data bytes, found {got}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and numpy arrays, nothing else: a pickle that
    names any other callable (the way a pickle runs code) is refused before it is called."""

    ALLOWED = {(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")}
    ALLOWED |= {("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}; a CIFAR batch holds only arrays and lists")
        return super().find_class(module, name)


def read_cifar_batch(path: str | Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR python pickle: images (N, 3, 32, 32) uint8 and labels (N,) int64.
    Read with an unpickler that can build arrays and lists only (no code runs)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            d = _ArrayUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"dataset file {path} is missing") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise DataError(f"dataset file {path} is corrupt or truncated ({exc})") from None
    if not isinstance(d, dict) or b"data" not in d or label_key not in d:
        raise DataError(
            f"dataset file {path} is not a CIFAR batch (needs keys b'data' and {label_key!r})"
        )
    data = np.asarray(d[b"data"])
    labels = np.asarray(d[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"dataset file {path}: b'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise DataError(f"dataset file {path}: {len(labels)} labels for {data.shape[0]} images")
    return data.reshape(-1, 3, 32, 32), labels
