"""Fault injection: hostile clients, as a feature (``--adversary KIND --adversaries N``).

A compression library's users want to know what one bad client does to a round, so
the simulator and the Flower client runtime can turn N of the K clients (a seeded
choice, the same in every driver) into one of these:

- ``nan``: its honest payload with every float replaced by NaN;
- ``huge``: its honest payload with every float replaced by +-1e30 (or its dtype's largest finite value);
- ``scale``: an honestly encoded payload of -100 x its honest update (the update is
  scaled before error feedback and compression, so every method encodes it);
- ``collude``: the hostile clients agree on one sign-flipped direction without talking:
  minus the last global step w_t - w_{t-1} (every one of them saw both models), each at
  ``COLLUDE`` x its own honest update's norm (its estimate of the round's median norm, so the
  update passes the ``--norm-clip 3`` bound); a colluder without w_{t-1} (its first round)
  sends minus ``COLLUDE`` x its honest update. Scaled before error feedback and compression,
  as ``scale``;
- ``garbage``: random bytes of the honest payload's length;
- ``wrong-shape``: a well-formed payload of the right method whose first field has one
  element more than the method's format allows;
- ``drop``: no reply at all.

The server's defences (:mod:`e3sfc.federated.server`): payloads are checked before
use, non-finite updates are rejected, and robust aggregation bounds each update's
norm by a multiple of the round's median.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from .. import wire

ADVERSARY = 5     # purpose key for derive_seed (see runtime)
SCALE = -100.0    # what ``scale`` multiplies the honest update by
HUGE = 1e30
COLLUDE = 2.5     # ``collude``: the shared update's norm, in honest update norms (under the 3x median clip)


def collude(delta: torch.Tensor, w: torch.Tensor, seen: torch.Tensor | None) -> torch.Tensor:
    """A ``collude`` client's update at w_t: minus the last global step w_t - ``seen`` (the same for
    every colluder that holds w_{t-1}: one shared direction), with ``COLLUDE`` x the norm of its honest
    update ``delta``; without w_{t-1} (or with no step), ``-COLLUDE`` x ``delta``."""
    norm = torch.linalg.vector_norm(delta.double())
    step = None if seen is None else (w - seen).double()
    snorm = None if step is None else torch.linalg.vector_norm(step)
    if step is None or not snorm > 0:
        return delta * -COLLUDE
    return (step * (-COLLUDE * norm / snorm)).to(delta.dtype)


@functools.lru_cache(maxsize=8)  # every ClientRuntime asks; draw once per run, not once per client
def hostile_clients(seed: int, clients: int, count: int, derive) -> frozenset[int]:
    """The ``count`` hostile client ids of a run (a seeded choice, identical in every driver)."""
    if count <= 0:
        return frozenset()
    rng = np.random.default_rng(derive(seed, ADVERSARY))
    return frozenset(int(k) for k in rng.choice(clients, count, replace=False))


def corrupt(kind: str, blob: bytes, rng: np.random.Generator) -> bytes:
    """The payload a hostile client of ``kind`` sends instead of its honest ``blob``
    (``scale`` and ``drop`` are applied in the client step, not here)."""
    if kind == "garbage":
        return rng.integers(0, 256, len(blob), dtype=np.uint8).tobytes()
    p = wire.decode(blob, check_finite=False)  # its own model may be wrecked already
    fields = list(p.fields)
    if kind in ("nan", "huge"):
        for i, a in enumerate(fields):
            if a.dtype.kind == "f":
                big = min(HUGE, float(np.finfo(a.dtype).max))  # finite in the field's own dtype
                fields[i] = (np.full_like(a, np.nan) if kind == "nan"
                             else np.where(a < 0, -big, big).astype(a.dtype))
    elif kind == "wrong-shape":
        fields[0] = np.concatenate([fields[0].reshape(-1), np.zeros(1, fields[0].dtype)])
    else:
        raise ValueError(f"corrupt: unknown kind {kind!r}")
    return wire.encode(wire.Payload(p.method, tuple(fields)))
