"""The two halves of a federated round, shared by every driver.

:class:`ServerRuntime` holds everything the server knows (w_t, its E-3SFC
residual, the broadcast history, which replica version each client holds, the
budget scheduler and the byte ledger). :class:`ClientRuntime` holds one
client's state (its EF residual, how often it trained, and under the 3SFC
downlink its model replica). They talk only through :class:`TrainIns` and
:class:`~e3sfc.federated.client.ClientUpdate`, whose payloads are wire bytes:
the in-process simulator passes them as Python objects, the Flower apps put
them in Flower messages. Same code, same numbers.

Round t:
1. ``ServerRuntime.begin_round(t)`` samples S_t, picks M_t and, for each
   participant behind w_t, prepares its catch-up: the broadcasts it missed
   (3SFC downlink) or the full model w_t when that is fewer bytes or the
   downlink is dense. ``--init seed``: every party builds w_1 from the seed,
   nothing is sent; ``--init broadcast``: w_1 is shipped at a client's first round.
2. ``ClientRuntime.handle(ins)`` applies the catch-up to its replica (which
   must then equal w_t), trains, compresses with EF and returns its update.
3. ``ServerRuntime.end_round(t, updates)`` decodes and averages; with the dense
   downlink w_{t+1} = w_t + mean; with the 3SFC downlink (E-3SFC) it compresses
   its residual plus the mean at w_t, applies only what it sends and keeps the
   broadcast for the clients' next catch-up.

Bytes: uplink, one payload per participant; downlink, what each catch-up
carries. At full participation under E-3SFC each client receives exactly one
broadcast per round from round 2 on (the last round's broadcast is applied by
the server, which evaluates w_{T+1}, and would go out with a round T+1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..compress import Compressor, Context, ErrorFeedback, from_config
from ..compress.base import Steps, run_steps
from ..compress.fedavg import Dense
from ..compress.threesfc import ThreeSFC
from ..config import SYNTH_METHODS, RunConfig
from ..metrics import DOWN, UP, Ledger
from . import adversary
from .budget import BudgetScheduler
from .client import ClientUpdate, apply_broadcast, client_lr, client_step_steps
from .params import set_flat
from .server import admit, server_downlink, server_step

# purposes for derive_seed
MODEL_INIT, SAMPLING, TRAINING, COMPRESSION = 1, 2, 3, 4


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for (seed, keys...): independent streams per round/client/purpose."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


def sample_clients(seed: int, round: int, clients: int, fraction: float) -> list[int]:
    """Seeded client sampling over ids 0..K-1 (sorted); every client when fraction is 1."""
    m = max(1, round_half_up(fraction * clients))
    if m >= clients:
        return list(range(clients))
    rng = np.random.default_rng(derive_seed(seed, SAMPLING, round))
    return sorted(int(k) for k in rng.choice(clients, m, replace=False))


def make_context(cfg: RunConfig, model: nn.Module, weights: torch.Tensor, input_shape, num_classes: int,
                 round: int, client: int, samples: int | None) -> Context:
    g = torch.Generator().manual_seed(derive_seed(cfg.seed, COMPRESSION, round, client + 1))
    return Context(model, weights, tuple(input_shape), num_classes, round=round, client=client, generator=g,
                   samples=samples)


def downlink_compressor(cfg: RunConfig) -> ThreeSFC:
    """The E-3SFC downlink encoder: 3SFC with the run's knobs, early stop set by ``downlink_patience``."""
    opts = {k: getattr(cfg, k) for k in ("samples", "steps", "max_iter", "lambd")}
    return ThreeSFC.from_options(**opts, patience=cfg.downlink_patience)


@dataclass
class TrainIns:
    """Server -> client at the start of round t."""

    round: int
    samples: int | None                                      # M_t for the synthesis methods
    model: bytes | None = None                               # the full model w_t (dense payload)
    broadcasts: list[tuple[int, bytes, int]] = field(default_factory=list)  # (round s, blob, M_s) to replay

    def nbytes(self) -> int:
        """Downlink bytes this message carries (payloads only)."""
        return (len(self.model) if self.model is not None else 0) + sum(len(b) for _, b, _ in self.broadcasts)


class ClientRuntime:
    """One client's persistent state and its half of every round."""

    def __init__(self, cfg: RunConfig, cid: int, input_shape, num_classes: int, initial: torch.Tensor,
                 compressor: Compressor | None = None):
        self.cfg, self.cid = cfg, cid
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
        self.initial = initial                      # w_1, buildable from the shared seed
        self.compressor = compressor
        self.down = downlink_compressor(cfg)
        self.dense = Dense()
        self.ef = ErrorFeedback(enabled=cfg.ef)
        self.trained = 0
        self.replica: torch.Tensor | None = None    # kept between rounds under the 3SFC downlink only
        hostile = adversary.hostile_clients(cfg.seed, cfg.clients, cfg.adversaries, derive_seed)
        self.hostile = cfg.adversary if cid in hostile else None  # fault injection (--adversary)

    def _ctx(self, model, weights, round, samples):
        return make_context(self.cfg, model, weights, self.input_shape, self.num_classes, round, self.cid, samples)

    def catch_up(self, ins: TrainIns, model: nn.Module) -> torch.Tensor:
        """Apply the full model and/or the missed broadcasts; returns the replica (w_t)."""
        if ins.model is not None:
            ctx = self._ctx(model, self.initial, ins.round, None)
            w = self.dense.decompress(self.dense.decode(ins.model, ctx), ctx)
        elif self.replica is not None:
            w = self.replica
        else:
            w = self.initial.clone()
        for s, blob, m in ins.broadcasts:
            set_flat(model, w)
            w = apply_broadcast(self._ctx(model, w, s, m), blob, self.down)
        if self.cfg.resolved_downlink == "3sfc":
            self.replica = w
        return w

    def handle(self, ins: TrainIns, model: nn.Module, train_model: nn.Module, x: torch.Tensor,
               y: torch.Tensor) -> ClientUpdate | None:
        """Round t at this client: catch up, train from w_t, compress with EF. ``model`` ends at w_t.
        None: no reply (a ``drop`` adversary)."""
        return run_steps(self.handle_steps(ins, model, train_model, x, y))

    def handle_steps(self, ins: TrainIns, model: nn.Module, train_model: nn.Module, x: torch.Tensor,
                     y: torch.Tensor) -> Steps:
        """:meth:`handle` with the compressor's objective evaluations handed out (``client_step_steps``);
        everything up to the first evaluation (catch-up, training) runs at the first ``next``."""
        if self.compressor is None:
            self.compressor = from_config(self.cfg, self._ctx(model, self.initial, 0, None))
        w = self.catch_up(ins, model)
        set_flat(model, w)
        if self.hostile == "drop":  # took the message, sends nothing back
            return None
        cfg = self.cfg
        g = torch.Generator().manual_seed(derive_seed(cfg.seed, TRAINING, ins.round, self.cid))
        u = yield from client_step_steps(
            train_model, self._ctx(model, w, ins.round, ins.samples), x, y, compressor=self.compressor, ef=self.ef,
            epochs=cfg.local_epochs, batch_size=cfg.batch_size, lr=client_lr(cfg.lr, cfg.lr_decay, self.trained),
            generator=g, update_scale=adversary.SCALE if self.hostile == "scale" else 1.0)
        self.trained += 1
        if self.hostile not in (None, "scale"):
            rng = np.random.default_rng(derive_seed(cfg.seed, adversary.ADVERSARY, ins.round, self.cid))
            u.blob = adversary.corrupt(self.hostile, u.blob, rng)
        return u

    def state_dict(self) -> dict:
        return {"trained": self.trained, "replica": None if self.replica is None else self.replica.cpu(),
                "residual": self.ef.residuals.get(self.cid)}

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        self.trained = int(state["trained"])
        self.replica = None if state["replica"] is None else state["replica"].to(device)
        self.ef.residuals = {} if state["residual"] is None else {self.cid: state["residual"].to(device)}


class ServerRuntime:
    """The server's state and its half of every round."""

    def __init__(self, cfg: RunConfig, model: nn.Module, weights: torch.Tensor, input_shape, num_classes: int,
                 sizes: dict[int, int] | None = None):
        self.cfg = cfg
        self.sizes = sizes                            # partition sizes: the bound on a reply's num_samples
        self.asked: list[int] = []                    # this round's participants
        self.model = model                            # holds w_t between calls
        self._model_blob: tuple[tuple, bytes] = ((), b"")  # ((round, w_t identity), dense w_t message)
        self.model.eval()
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
        self.weights = weights
        self.compressor = from_config(cfg, self.context(0, None))
        self.down = downlink_compressor(cfg)
        self.dense = Dense()
        self.synth_down = cfg.resolved_downlink == "3sfc"
        self.synth = cfg.method in SYNTH_METHODS
        self.ef = ErrorFeedback(enabled=cfg.ef)       # the server residual e_s (key -1)
        self.ledger = Ledger()
        self.version = np.full(cfg.clients, 1 if cfg.resolved_init == "seed" else 0, dtype=np.int64)
        self.owed = np.zeros(cfg.clients, dtype=np.int64)   # bytes of broadcasts made but not yet delivered
        self.history: dict[int, tuple[bytes, int]] = {}     # round -> (broadcast blob, M)
        self.scheduler = BudgetScheduler(cfg.schedule, cfg.budget_bytes or None, cfg.rounds, cfg.samples,
                                         cfg.max_samples, cfg.target_cosine, cfg.decay_rate)
        self.last_cosine: float | None = None
        self.schedule_log: list[int] = []
        self.dense_bytes = self.dense.payload_bytes(self.context(0, None))
        if self.scheduler.budget is not None:
            m = max(1, round_half_up(cfg.fraction * cfg.clients))
            need_dense = cfg.resolved_downlink == "dense" or cfg.resolved_init == "broadcast"
            self.scheduler.check(lambda M: self.round_cost(M, m, m if need_dense else 0, last=False))

    def context(self, round: int, samples: int | None) -> Context:
        return make_context(self.cfg, self.model, self.weights, self.input_shape, self.num_classes, round, -1,
                            samples)

    def round_cost(self, M: int, participants: int, dense_syncs: int, last: bool) -> int:
        """Bytes a round with M synthetic samples commits: its uplinks, the full models it sends and,
        under the 3SFC downlink, one broadcast for every client (none after the last round)."""
        ctx = self.context(0, M)
        cost = participants * self.compressor.payload_bytes(ctx) + dense_syncs * self.dense_bytes
        if self.synth_down and not last:
            cost += self.cfg.clients * self.down.payload_bytes(ctx)
        return cost

    # ------------------------------------------------------------------ round t, first half
    def begin_round(self, t: int) -> tuple[list[int], int | None, dict[int, TrainIns]]:
        cfg = self.cfg
        participants = sample_clients(cfg.seed, t, cfg.clients, cfg.fraction)
        plans = {k: self._plan_sync(t, k) for k in participants}
        M = None
        if self.synth:
            remaining = None
            if self.scheduler.budget is not None:
                committed = self.ledger.total(UP) + self.ledger.total(DOWN) + int(self.owed.sum())
                remaining = self.scheduler.budget - committed
            dense_syncs = sum(1 for p in plans.values() if p == "model")
            M = self.scheduler.choose(
                t, lambda m: self.round_cost(m, len(participants), dense_syncs, last=t == cfg.rounds),
                remaining, self.last_cosine)
            self.schedule_log.append(M)
        set_flat(self.model, self.weights)
        self.asked = participants
        return participants, M, {k: self.sync_message(t, k, M, plans[k]) for k in participants}

    def sync_message(self, t: int, k: int, M: int | None, plan: str | None = None) -> TrainIns:
        """The message that brings client k to w_t (counted in the ledger under round t)."""
        plan = plan or self._plan_sync(t, k)
        ins = TrainIns(t, M)
        if plan == "model":
            # one encoding per round, shared by every client it goes to (bytes are immutable):
            # 100 ResNet-18 clients would otherwise hold 100 copies of a 44.7 MB message at once
            key = (t, self.weights.data_ptr(), self.weights._version)
            if self._model_blob[0] != key:
                self._model_blob = (key, self.dense.encode(self.dense.compress(self.weights, self.context(t, None))[0]))
            ins.model = self._model_blob[1]
        elif plan == "replay":
            ins.broadcasts = [(s, *self.history[s]) for s in range(int(self.version[k]), t)]
        if ins.nbytes():
            self.ledger.add(t, k, DOWN, ins.nbytes())
        self.owed[k] = 0
        self.version[k] = t
        return ins

    def _plan_sync(self, t: int, k: int) -> str:
        v = int(self.version[k])
        if v == t:
            return "none"
        pending = range(v, t)
        if (self.synth_down and v >= 1 and all(s in self.history for s in pending)
                and int(self.owed[k]) <= self.dense_bytes):
            return "replay"
        return "model"

    # ------------------------------------------------------------------ round t, second half
    def end_round(self, t: int, M: int | None, updates: list[ClientUpdate]) -> dict[str, float]:
        """Admit the replies (envelope checks), decode, bound and aggregate them, then move the
        model (and, under the 3SFC downlink, compress the aggregate for the next broadcast)."""
        ctx = self.context(t, M)
        updates, refused, received = admit(updates, set(self.asked), self.compressor.payload_bytes(ctx), self.sizes)
        for k, n in received.items():
            self.ledger.add(t, k, UP, n)
        agg = server_step(ctx, updates, self.compressor, weighted=self.cfg.weighted, norm_clip=self.cfg.norm_clip)
        down_cos = float("nan")
        if self.synth_down:
            b = server_downlink(ctx, agg.delta, self.down, self.ef)
            down_cos = b.stats.get("cosine", float("nan"))
            self.history[t] = (b.blob, M or self.down.samples)
            if t < self.cfg.rounds:  # the last broadcast goes out only if someone syncs after the run
                self.owed += len(b.blob)
            keep = max(1, self.dense_bytes // len(b.blob))
            for s in [s for s in self.history if s <= t - keep]:
                del self.history[s]  # a catch-up that old gets the full model instead
            self.weights = b.weights
        else:
            self.weights = self.weights + agg.delta
        set_flat(self.model, self.weights)
        ok = set(agg.accepted)
        cos = [u.stats["cosine"] for u in updates if "cosine" in u.stats and u.client in ok]
        self.last_cosine = float(np.mean(cos)) if cos else None
        return {
            "participants": len(agg.accepted),
            "rejected": len(agg.rejected) + len(refused),
            "missing": len(set(self.asked) - set(received)),
            "clipped": len(agg.clipped),
            "cosine": float(np.mean(cos)) if cos else float("nan"),
            "downlink_cosine": down_cos,
            "samples": float("nan") if M is None else M,
            "compress_seconds": float(sum(u.stats.get("compress_seconds", 0.0) for u in updates)),
            "train_seconds": float(sum(u.stats.get("train_seconds", 0.0) for u in updates)),
        }

    def participations(self) -> int:
        return sum(len(self.ledger.per_client(t, UP)) for t in self.ledger.rounds())

    def state_dict(self) -> dict:
        return {
            "weights": self.weights.cpu(), "ef": self.ef.state_dict(), "ledger": self.ledger.state_dict(),
            "version": self.version.tolist(), "owed": self.owed.tolist(), "history": dict(self.history),
            "scheduler": self.scheduler.state_dict(), "last_cosine": self.last_cosine,
            "schedule_log": list(self.schedule_log),
        }

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        self.weights = state["weights"].to(device)
        set_flat(self.model, self.weights)
        self.ef.load_state_dict(state["ef"], device)
        self.ledger.load_state_dict(state["ledger"])
        self.version = np.asarray(state["version"], dtype=np.int64).copy()
        self.owed = np.asarray(state["owed"], dtype=np.int64).copy()
        self.history = dict(state["history"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.last_cosine = state["last_cosine"]
        self.schedule_log = list(state["schedule_log"])

