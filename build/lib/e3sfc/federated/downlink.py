"""The downlink: what the server sends its clients, and how a client that missed rounds catches up.

Two kinds, chosen by ``--downlink`` (``auto``: the method's own, ``3sfc`` for e3sfc and
``dense`` for the rest):

- ``dense``: a participant that is behind receives the full model w_t (one dense payload).
- a compressor (``3sfc``, ``topk``, ``stc``, ``sign``, ``qsgd``, ``fedsynth``): double-way
  compression with error feedback on the server side too (E-3SFC; DoubleSqueeze for the
  others). At the end of round t the server forms e_s + Delta_t (its residual plus the
  aggregate), compresses it at w_t into one broadcast, sets e_s to what the broadcast
  left out, and moves to w_{t+1} = w_t + decode(broadcast) -- decoded from the bytes it
  sends, by :func:`apply_broadcast`, the same function every client uses, so every
  replica equals the server model bit for bit. A participant behind w_t gets the
  broadcasts it missed (replayed in order, each decoded at the model of its round), or
  the full model when that is fewer bytes or the history no longer reaches back.

Bytes: each message is counted in the ledger under the round it is delivered in, per
client; a broadcast that a client has not received yet is "owed" (what the budget
scheduler counts as committed). ``--init seed``: every party builds w_1 from the seed
(nothing sent); ``--init broadcast``: w_1 goes out at a client's first round.
Knobs: ``--downlink-ratio`` (default: the uplink's ``--ratio``; ``match:M`` as on the
uplink) and, for the 3SFC downlink, ``--downlink-patience``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import protocol
from ..compress import Compressor, Context, ErrorFeedback, build_compressor
from ..compress.fedavg import Dense
from ..metrics import DOWN, Ledger

SERVER = -1  # the server's key in its ErrorFeedback


@dataclass
class TrainIns:
    """Server -> client at the start of round t."""

    round: int
    samples: int | None                                      # M_t for the methods sized by samples
    model: bytes | None = None                               # the full model w_t (dense payload)
    broadcasts: list[tuple[int, bytes, int]] = field(default_factory=list)  # (round s, blob, M_s or 0) to replay

    def nbytes(self) -> int:
        """Downlink bytes this message carries (payloads only)."""
        return (len(self.model) if self.model is not None else 0) + sum(len(b) for _, b, _ in self.broadcasts)


@dataclass
class Broadcast:
    blob: bytes                    # what every client receives
    weights: torch.Tensor          # (P,) w_{t+1} = w_t + decoded, as every replica computes it
    stats: dict[str, float]


def downlink_compressor(cfg: Any, ctx: Context) -> Compressor | None:
    """The run's downlink compressor, or None for the dense downlink. Built from the run's options
    with ``--downlink-ratio`` for ``--ratio`` and ``--downlink-patience`` for ``--patience`` (the
    server's one search a round reaches every client, so by default it runs in full)."""
    name = cfg.resolved_downlink
    if name == "dense":
        return None
    options = {**cfg.to_dict(), "patience": cfg.downlink_patience, "batch_search": False,
               "lambd": protocol.downlink_lambd(cfg), "select": protocol.selection(cfg)}
    return build_compressor(name, options, cfg.resolved_downlink_ratio, ctx, "--downlink-ratio")


def apply_broadcast(ctx: Context, blob: bytes, compressor: Compressor) -> torch.Tensor:
    """A replica's decode of a downlink broadcast: w + decompress(decode(blob)) at w = ``ctx.weights``.
    The server applies its own broadcasts through this same function (bit-identical replicas)."""
    return ctx.weights + compressor.decompress(compressor.decode(blob, ctx), ctx)


class Downlink:
    """The server side of the downlink: its residual, the broadcast history, which model
    version each client holds, the catch-up messages and their bytes."""

    def __init__(self, compressor: Compressor | None, clients: int, init: str, ef: bool, ledger: Ledger):
        self.compressor = compressor
        self.dense = Dense()
        self.ledger = ledger
        self.ef = ErrorFeedback(enabled=ef and compressor is not None and compressor.biased)  # e_s
        self.first = 1 if init == "seed" else 0                 # the model a client holds before any message
        self.version = np.full(clients, self.first, dtype=np.int64)  # w_v held by each client
        self.owed = np.zeros(clients, dtype=np.int64)       # bytes of broadcasts made but not yet delivered
        self.history: dict[int, tuple[bytes, int]] = {}     # round -> (broadcast blob, M or 0)
        self._model_blob: tuple[tuple, bytes] = ((), b"")  # ((round, w_t identity), dense w_t message)
        self.start: torch.Tensor | None = None              # the compressor's carry (a warm start), if any

    @property
    def compressed(self) -> bool:
        return self.compressor is not None

    def dense_bytes(self, ctx: Context) -> int:
        return self.dense.payload_bytes(ctx)

    def broadcast_bytes(self, ctx: Context) -> int:
        """Bytes of one broadcast at ``ctx`` (0 for the dense downlink)."""
        return self.compressor.payload_bytes(ctx) if self.compressor is not None else 0

    # ---------------------------------------------------------------- start of round t
    def plan(self, t: int, k: int, dense_bytes: int) -> str:
        """How client k reaches w_t: ``none`` (it holds it), ``replay`` (the broadcasts it missed)
        or ``model`` (the full model)."""
        v = int(self.version[k])
        if v == t:
            return "none"
        if (self.compressed and v >= 1 and all(s in self.history for s in range(v, t))
                and int(self.owed[k]) <= dense_bytes):
            return "replay"
        return "model"

    def message(self, t: int, k: int, M: int | None, plan: str, weights: torch.Tensor, ctx: Context) -> TrainIns:
        """The message that brings client k to w_t (``weights``), counted in the ledger under round t."""
        ins = TrainIns(t, M)
        if plan == "model":
            # one encoding per round, shared by every client it goes to (bytes are immutable):
            # 100 ResNet-18 clients would otherwise hold 100 copies of a 44.7 MB message at once
            key = (t, weights.data_ptr(), weights._version)
            if self._model_blob[0] != key:
                self._model_blob = (key, self.dense.encode(self.dense.compress(weights, ctx)[0]))
            ins.model = self._model_blob[1]
        elif plan == "replay":
            ins.broadcasts = self.missed(t, k)
        if ins.nbytes():
            self.ledger.add(t, k, DOWN, ins.nbytes())
        self.delivered(t, k)
        return ins

    def missed(self, t: int, k: int) -> list[tuple[int, bytes, int]]:
        """The broadcasts client k has not received, in order: (round s, blob, M_s or 0) for s = v..t-1."""
        return [(s, *self.history[s]) for s in range(int(self.version[k]), t)]

    def delivered(self, t: int, k: int) -> None:
        """Client k was sent what brings it to w_t: it owes nothing and holds w_t (once it replies)."""
        self.owed[k] = 0
        self.version[k] = t

    def grow(self, clients: int) -> None:
        """Make room for client ids up to ``clients - 1`` (a driver that meets its clients as they come)."""
        n = clients - len(self.version)
        if n > 0:
            self.version = np.concatenate([self.version, np.full(n, self.first, dtype=np.int64)])
            self.owed = np.concatenate([self.owed, np.zeros(n, dtype=np.int64)])

    def forget(self, k: int) -> None:
        """Client k's reply never came: whether it applied its catch-up is unknown, so its next
        catch-up is the full model."""
        self.version[k] = 0

    # ---------------------------------------------------------------- end of round t
    def broadcast(self, t: int, ctx: Context, delta: torch.Tensor, M: int | None, last: bool,
                  dense_bytes: int) -> Broadcast:
        """Compress e_s + ``delta`` at w_t (``ctx``) into round t's broadcast; e_s keeps what it
        left out; the server moves by exactly what it sends. The last round's broadcast is owed
        to no one (it would go out only with a round T + 1)."""
        assert self.compressor is not None
        target = self.ef.target(SERVER, delta)
        ctx.start = self.start
        payload, stats = self.compressor.compress(target, ctx)
        self.start = self.compressor.carry(payload, ctx)
        blob = self.compressor.encode(payload)
        decoded = self.compressor.decompress(self.compressor.decode(blob, ctx), ctx)  # as apply_broadcast does
        self.ef.update(SERVER, target, decoded)
        weights = ctx.weights + decoded
        self.history[t] = (blob, M or 0)
        if not last:
            self.owed += len(blob)
        keep = max(1, dense_bytes // len(blob))
        for s in [s for s in self.history if s <= t - keep]:
            del self.history[s]  # a catch-up that old gets the full model instead
        return Broadcast(blob, weights, stats)

    # ---------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict:
        return {"ef": self.ef.state_dict(), "version": self.version.tolist(), "owed": self.owed.tolist(),
                "history": dict(self.history), "start": None if self.start is None else self.start.cpu()}

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        self.ef.load_state_dict(state["ef"], device)
        self.version = np.asarray(state["version"], dtype=np.int64).copy()
        self.owed = np.asarray(state["owed"], dtype=np.int64).copy()
        self.history = dict(state["history"])
        start = state.get("start")
        self.start = None if start is None else start.to(device)
