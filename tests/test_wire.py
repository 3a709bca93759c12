from __future__ import annotations

import numpy as np
import pytest

from e3sfc import wire
from e3sfc.errors import PayloadError
from e3sfc.wire import FieldSpec, Payload

SPECS = [FieldSpec(np.dtype("<f4"), (1, 1, 28, 28)), FieldSpec(np.dtype("<f4"), (1, 10)),
         FieldSpec(np.dtype("<f4"), ())]


def _payload():
    rng = np.random.default_rng(0)
    return Payload.of(3, rng.standard_normal((1, 1, 28, 28)).astype(np.float32),
                      rng.standard_normal((1, 10)).astype(np.float32), np.float32(0.5))


def test_round_trip_and_exact_size():
    p = _payload()
    b = wire.encode(p)
    # header 5 + (2+16) + (2+8) + 2 = 35; data 4*(784 + 10 + 1) = 3180
    assert len(b) == 35 + 3180 == wire.encoded_size(SPECS)
    q = wire.decode(b, method=3, expect=SPECS)
    assert all(np.array_equal(a, c) for a, c in zip(p.fields, q.fields))


def test_mixed_dtypes_round_trip():
    p = Payload.of(1, np.arange(5, dtype=np.int32), np.array([1, 0, 255], dtype=np.uint8),
                   np.array([1.5], dtype=np.float64))
    q = wire.decode(wire.encode(p))
    assert [a.dtype for a in q.fields] == [np.int32, np.uint8, np.float64]
    assert q.fields[1].tolist() == [1, 0, 255]


@pytest.mark.parametrize("mutate,msg", [
    (lambda b: b[:-1], "truncated"),
    (lambda b: b[:3], "truncated"),
    (lambda b: b + b"\x00", "oversized"),
    (lambda b: b"XX" + b[2:], "bad magic"),
    (lambda b: b[:2] + b"\x09" + b[3:], "version"),
    (lambda b: b[:3] + b"\x04" + b[4:], "method id"),
])
def test_rejects_bad_payloads(mutate, msg):
    with pytest.raises(PayloadError, match=msg):
        wire.decode(mutate(wire.encode(_payload())), method=3, expect=SPECS)


def test_rejects_wrong_shape_and_non_finite_and_too_big():
    b = wire.encode(Payload.of(3, np.zeros((2, 10), np.float32)))
    with pytest.raises(PayloadError, match="expected"):
        wire.decode(b, method=3, expect=[FieldSpec(np.dtype("<f4"), (1, 10))])
    nan = wire.encode(Payload.of(3, np.array([1.0, np.nan], np.float32)))
    with pytest.raises(PayloadError, match="non-finite"):
        wire.decode(nan)
    with pytest.raises(PayloadError, match="oversized"):
        wire.decode(b, max_bytes=10)
    with pytest.raises(PayloadError, match="must be bytes"):
        wire.decode("not bytes")  # type: ignore[arg-type]
