"""The two halves of a federated round, shared by every driver.

:class:`ServerRuntime` keeps the round's order and delegates each job: sampling
(:func:`sample_clients`), the downlink (:class:`~.downlink.Downlink`: catch-up messages,
the server residual, broadcasts, their bytes), the budget (:class:`~.budget.BudgetScheduler`)
and aggregation (:func:`~.server.admit` and :func:`~.server.server_step`); it owns w_t and
the byte ledger. :class:`ClientRuntime` holds one client's state (its EF residual, how
often it trained, and under a compressed downlink its model replica). They talk only
through :class:`~.downlink.TrainIns` and :class:`~.client.ClientUpdate`, whose payloads
are wire bytes: the in-process simulator passes them as Python objects, the Flower apps
put them in Flower messages. Same code, same numbers.

Round t:
1. ``ServerRuntime.begin_round(t)`` samples S_t, picks M_t (methods sized by samples) and
   gives each participant the message that brings it to w_t.
2. Each participant: ``ClientRuntime.prepare`` applies the catch-up (its replica must then
   equal w_t), trains and forms its EF target; the uplink compressor's ``compress_many``
   compresses one or several participants' targets; ``ClientRuntime.finish`` serializes
   and updates the residual (``handle`` is the three for one client, as on Flower).
3. ``ServerRuntime.end_round(t, updates)`` admits, decodes, bounds and averages the updates;
   with the dense downlink w_{t+1} = w_t + mean, with a compressed one the server applies
   exactly the broadcast it makes for the clients' next catch-up.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..compress import Compressor, Context, ErrorFeedback, build_compressor
from ..compress.fedavg import Dense
from ..config import RunConfig
from ..errors import ConfigError
from ..metrics import DOWN, UP, Ledger
from ..models import BUILTIN_MODELS
from ..wire import Payload
from . import adversary
from .budget import BudgetScheduler
from .. import protocol
from .client import ClientUpdate, Prepared, ef_target, finish_update, local_train
from .downlink import Downlink, TrainIns, apply_broadcast, downlink_compressor
from .params import set_flat
from .server import Screened, admit, aggregate, cap_samples, history, screen

log = logging.getLogger(__name__)

Train = Callable[[torch.Tensor, int], tuple[torch.Tensor, int]]
"""A client's local training: (w_t, round t) -> (Delta = w_k - w_t, the number of samples trained on)."""

# a budget whose even share a round buys more than this many times --samples is warned about before round 1
LARGE_SAMPLES = 4

# purposes for derive_seed
MODEL_INIT, SAMPLING, TRAINING, COMPRESSION = 1, 2, 3, 4


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for (seed, keys...): independent streams per round/client/purpose."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def sample_clients(seed: int, round: int, clients: int, m: int) -> list[int]:
    """Seeded sampling of m of the client ids 0..K-1 (sorted); every client when m >= K."""
    if m >= clients:
        return list(range(clients))
    rng = np.random.default_rng(derive_seed(seed, SAMPLING, round))
    return sorted(int(k) for k in rng.choice(clients, m, replace=False))


def make_context(cfg: RunConfig, model: nn.Module, weights: torch.Tensor, input_shape, num_classes: int,
                 round: int, client: int, samples: int | None) -> Context:
    g = torch.Generator().manual_seed(derive_seed(cfg.seed, COMPRESSION, round, client + 1))
    return Context(model, weights, tuple(input_shape), num_classes, round=round, client=client, generator=g,
                   samples=samples)


def uplink_compressor(cfg: RunConfig, ctx: Context) -> Compressor:
    """The run's method with its own options from the run settings (``--ratio match:M`` resolved at ``ctx``)."""
    return build_compressor(cfg.method, {**cfg.to_dict(), "batch_search": cfg.resolved_batch_search,
                                        "select": protocol.selection(cfg)}, cfg.ratio, ctx)


def _cosine(a: torch.Tensor, b: torch.Tensor | None) -> float:
    """cos(a, b) in float64; NaN without b or when either is zero."""
    if b is None:
        return float("nan")
    na, nb = float(torch.linalg.vector_norm(a.double())), float(torch.linalg.vector_norm(b.double()))
    return float(a.double() @ b.double()) / (na * nb) if na > 0 and nb > 0 else float("nan")


class StaleReplica(RuntimeError):
    """A client's replica is not at the round the server's catch-up starts from."""


class ClientRuntime:
    """One client's persistent state and its half of every round."""

    def __init__(self, cfg: RunConfig, cid: int, input_shape, num_classes: int, initial: torch.Tensor,
                 compressor: Compressor | None = None, down: Compressor | None = None):
        self.cfg, self.cid = cfg, cid
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
        self.initial = initial                      # w_1, buildable from the shared seed
        self.compressor = compressor                # built from cfg at first use when not given
        self.down, self._down_ready = down, down is not None or cfg.resolved_downlink == "dense"
        self.dense = Dense()
        self.ef = ErrorFeedback(enabled=cfg.ef)
        self.trained = 0
        self.replica: torch.Tensor | None = None    # kept between rounds under a compressed downlink only
        self.version = 1 if cfg.resolved_init == "seed" else 0  # the round whose model the replica holds
        self.start: torch.Tensor | None = None      # the compressor's carry (a warm start), if it keeps one
        hostile = adversary.hostile_clients(cfg.seed, cfg.clients, cfg.adversaries, derive_seed)
        self.hostile = cfg.adversary if cid in hostile else None  # fault injection (--adversary)
        self.seen: torch.Tensor | None = None       # a ``collude`` client: the model of its last round (w_{t-1})
        self.local_data: tuple[torch.Tensor, torch.Tensor] | None = None  # set by :meth:`sgd`

    def _ctx(self, model, weights, round, samples):
        return make_context(self.cfg, model, weights, self.input_shape, self.num_classes, round, self.cid, samples)

    def _build(self, model: nn.Module) -> None:
        if self.compressor is None:
            self.compressor = uplink_compressor(self.cfg, self._ctx(model, self.initial, 0, None))
        if not self._down_ready:
            self.down, self._down_ready = downlink_compressor(self.cfg, self._ctx(model, self.initial, 0, None)), True

    def catch_up(self, ins: TrainIns, model: nn.Module, given: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the full model and/or the missed broadcasts; returns the replica (w_t). ``given``: w_t
        handed over by the driver outside the wire format (the add-on's dense ArrayRecord). A replay
        that does not start where this client's replica is (a reply the server never got, on Flower)
        is a StaleReplica error: the server then sends the full model next time."""
        self._build(model)
        if given is None and ins.model is None and ins.broadcasts and ins.broadcasts[0][0] != self.version:
            raise StaleReplica(f"client {self.cid} holds the model of round {self.version}; the server replays "
                               f"from round {ins.broadcasts[0][0]}")
        if given is not None:
            w = given
        elif ins.model is not None:
            ctx = self._ctx(model, self.initial, ins.round, None)
            w = self.dense.decompress(self.dense.decode(ins.model, ctx), ctx)
        elif self.replica is not None:
            w = self.replica
        else:
            w = self.initial.clone()
        for s, blob, m in ins.broadcasts:
            set_flat(model, w)
            w = apply_broadcast(self._ctx(model, w, s, m or None), blob, self.down)
        if self.down is not None:
            self.replica = w
        self.version = ins.round
        return w

    def sgd(self, train_model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Train:
        """This project's local training as a ``train`` for :meth:`prepare`: E epochs of plain SGD on
        (x, y) from w_t, seeded by (seed, round, client), lr decayed by the times this client trained."""
        cfg = self.cfg
        self.local_data = (x, y)  # a 3SFC search may start from it (--feature-init data); never sent

        def train(w: torch.Tensor, round: int) -> tuple[torch.Tensor, int]:
            g = torch.Generator().manual_seed(derive_seed(cfg.seed, TRAINING, round, self.cid))
            delta = local_train(train_model, w, x, y, epochs=cfg.local_epochs, batch_size=cfg.batch_size,
                                lr=protocol.client_lr(cfg, self.trained), generator=g)
            return delta, int(x.shape[0])

        return train

    def prepare(self, ins: TrainIns, model: nn.Module, train: Train,
                given: torch.Tensor | None = None) -> Prepared | None:
        """Round t up to compression: catch up (``model`` ends at w_t), train (``train(w_t, t)`` gives
        the update and the sample count), form the EF target. None: this client sends no reply
        (a ``drop`` adversary)."""
        w = self.catch_up(ins, model, given)
        set_flat(model, w)
        if self.hostile == "drop":  # took the message, sends nothing back
            return None
        t0 = time.perf_counter()
        delta, n = train(w, ins.round)
        if self.hostile == "collude":  # one shared update: minus the last global step, at the bound's edge
            delta, self.seen = adversary.collude(delta, w, self.seen), w.clone()
        ctx = self._ctx(model, w, ins.round, ins.samples)
        ctx.start = self.start
        if self.local_data is not None:
            ctx.extra["local_data"] = self.local_data
        p = ef_target(ctx, delta, compressor=self.compressor, ef=self.ef, num_samples=n,
                      train_seconds=time.perf_counter() - t0,
                      update_scale=adversary.SCALE if self.hostile == "scale" else 1.0)
        self.trained += 1
        return p

    def finish(self, p: Prepared, payload: Payload, stats: dict, compress_seconds: float = 0.0) -> ClientUpdate:
        """Serialize the payload, update the EF residual (a hostile client then spoils its bytes)."""
        u = finish_update(p, self.compressor, self.ef, payload, stats, compress_seconds)
        self.start = self.compressor.carry(payload, p.ctx)
        if self.hostile not in (None, "scale", "collude"):
            rng = np.random.default_rng(derive_seed(self.cfg.seed, adversary.ADVERSARY, p.ctx.round, self.cid))
            u.blob = adversary.corrupt(self.hostile, u.blob, rng)
        return u

    def step(self, ins: TrainIns, model: nn.Module, train: Train,
             given: torch.Tensor | None = None) -> ClientUpdate | None:
        """Round t at this client alone (a batch of one): catch up, train, EF target, compress, finish."""
        p = self.prepare(ins, model, train, given)
        if p is None:
            return None
        t0 = time.perf_counter()
        payload, stats = self.compressor.compress_many([p.target], [p.ctx])[0]
        return self.finish(p, payload, stats, time.perf_counter() - t0)

    def state_dict(self) -> dict:
        return {"trained": self.trained, "replica": None if self.replica is None else self.replica.cpu(),
                "residual": self.ef.residuals.get(self.cid), "version": self.version,
                "start": None if self.start is None else self.start.cpu(),
                "seen": None if self.seen is None else self.seen.cpu()}

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        self.trained = int(state["trained"])
        self.version = int(state["version"])
        self.replica = None if state["replica"] is None else state["replica"].to(device)
        self.ef.residuals = {} if state["residual"] is None else {self.cid: state["residual"].to(device)}
        start = state.get("start")
        self.start = None if start is None else start.to(device)
        seen = state.get("seen")
        self.seen = None if seen is None else seen.to(device)


def note_search_form(cfg: RunConfig, comps: list, ctx: Context) -> None:
    """When a run is built: one warning where a model of the user's own (not one of ``BUILTIN_MODELS``)
    gets the autograd form of a search from one of ``comps`` (slower than the closed form; on a CPU the
    batched search is then off unless asked for)."""
    if cfg.model in BUILTIN_MODELS:
        return
    if not any(c is not None and c.search_form(ctx) == "autograd" for c in comps):
        return
    batch = "" if cfg.resolved_batch_search or cfg.engine != "inprocess" else (
        "; --batch-search, off for it unless set, may help (it did for small CNNs on a CPU, not for VGG-11 "
        "or ResNet-18)")
    log.warning("--model %s takes the generic (autograd) form of the synthetic-feature search, which is slower "
                "than the closed form only a Linear/ReLU chain at its input's own resolution gets (about 3x an "
                "evaluation on the MLP)%s", cfg.model, batch)


def note_unused_options(cfg: RunConfig) -> None:
    """When a run is built: one warning for each method option set away from its default that neither the
    uplink's method nor the downlink's has (``--lambd 5`` with ``--method fedavg``): it changes nothing."""
    from ..compress import available_methods, get_compressor_class

    used = set(get_compressor_class(cfg.method).option_names())
    if cfg.resolved_downlink != "dense":
        used |= set(get_compressor_class(cfg.resolved_downlink).option_names())
    owners: dict[str, list[str]] = {}
    for m in available_methods():
        for name in get_compressor_class(m).option_names():
            owners.setdefault(name, []).append(m)
    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    for name in sorted(set(owners) - used):
        if name in defaults and getattr(cfg, name) != defaults[name]:
            down = f" nor of the downlink ({cfg.resolved_downlink})" if cfg.resolved_downlink != "dense" else ""
            log.warning("--%s %s has no effect: it is an option of %s, not of --method %s%s",
                        name.replace("_", "-"), getattr(cfg, name), ", ".join(owners[name]), cfg.method, down)


def warn_large_samples(s: BudgetScheduler, cost: Callable[[int], int]) -> None:
    """Before round 1: one warning where the budget's even share a round (``cost(M)``: a round's
    bytes at M samples both ways) buys more than ``LARGE_SAMPLES`` times the run's own M (``--samples``),
    with M, the search time it costs and what keeps M near ``--samples``."""
    share = s.budget / s.rounds
    m = 0  # the largest M (up to max_samples, the scheduler's cap) whose round fits the share
    while m < s.max_samples and cost(m + 1) <= share:
        m += 1
    if m <= LARGE_SAMPLES * s.samples:
        return
    capped = f" (--max-samples {s.max_samples}: the budget buys more)" if cost(m + 1) <= share else ""
    log.warning(
        "--budget-bytes %s over %d rounds buys about M = %d synthetic samples a payload%s, %.0fx --samples %d; "
        "the search's cost grows about linearly in M, so each round's search takes about %.0fx as long as at "
        "M = %d. To keep M near %d, raise --rounds (to about %s) or lower --budget-bytes (to about %s)",
        f"{s.budget:,}", s.rounds, m, capped, m / s.samples, s.samples, m / s.samples, s.samples, s.samples,
        f"{s.budget // cost(s.samples):,}", f"{cost(s.samples) * s.rounds:,}")


class ServerRuntime:
    """The server's state; keeps the round's order and hands each job to its part."""

    def __init__(self, cfg: RunConfig, model: nn.Module, weights: torch.Tensor, input_shape, num_classes: int,
                 sizes: dict[int, int] | None = None):
        self.cfg = cfg
        self.model = model                            # holds w_t between calls
        self.model.eval()
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
        self.weights = weights
        set_flat(self.model, weights)
        self.sizes = sizes                            # partition sizes: the bound on a reply's num_samples
        self.asked: list[int] = []                    # this round's participants
        ctx0 = self.context(0, None)
        if cfg.payload_bytes and (cfg.budget_bytes or cfg.schedule != "constant"):
            flag = f"--budget-bytes {cfg.budget_bytes}" if cfg.budget_bytes else f"--schedule {cfg.schedule}"
            raise ConfigError(f"--payload-bytes: {cfg.payload_bytes} is not allowed with {flag}; the budget "
                              "scheduler sizes each round's payloads (set one or the other)")
        self.compressor = uplink_compressor(cfg, ctx0)
        self.ledger = Ledger()
        self.downlink = Downlink(downlink_compressor(cfg, ctx0), cfg.clients, cfg.resolved_init, cfg.ef, self.ledger)
        self.dense_bytes = self.downlink.dense_bytes(ctx0)
        note_search_form(cfg, [self.compressor, self.downlink.compressor], ctx0)
        note_unused_options(cfg)
        self._payload: dict[int, int] = {}            # bytes of an uplink payload / a broadcast, by M
        self._broadcast: dict[int, int] = {}
        # M: --samples, or what --payload-bytes picked (the compressor's)
        self.scheduler = BudgetScheduler(cfg.schedule, cfg.budget_bytes or None, cfg.rounds,
                                         getattr(self.compressor, "samples", cfg.samples),
                                         cfg.max_samples, cfg.target_cosine, cfg.decay_rate)
        self.last_cosine: float | None = None       # what the scheduler reads: the uplink's cosine
        self.last_agg_cosine: float | None = None   # the aggregate's, where the driver measures it
        self.last_down_cosine: float | None = None  # and the broadcast's
        self.schedule_log: list[int] = []           # uplink M per round
        self.down_log: list[int] = []               # broadcast M per round (under a compressed downlink)
        self.last_rejected: dict[int, str] = {}     # the last round's rejected replies: client -> reason
        self.center: torch.Tensor | None = None      # --aggregate cclip: the last aggregate, next round's start;
        #                                              direction: the history the screen holds updates against
        self.standing: dict[int, tuple[float, int]] = {}  # --aggregate direction: client -> sum of pulls, rounds
        if self.scheduler.budget is not None:
            m = protocol.clients_per_round(cfg)
            need_dense = not self.downlink.compressed or cfg.resolved_init == "broadcast"
            self.scheduler.check(lambda M, Md: self.round_cost(M, m, m if need_dense else 0, last=False,
                                                                 Md=Md if self.splits_directions else None))
            warn_large_samples(self.scheduler, lambda M: self.round_cost(M, m, m if need_dense else 0, last=False))

    def context(self, round: int, samples: int | None) -> Context:
        return make_context(self.cfg, self.model, self.weights, self.input_shape, self.num_classes, round, -1,
                            samples)

    def round_cost(self, M: int, participants: int, dense_syncs: int, last: bool, Md: int | None = None) -> int:
        """Bytes a round with M synthetic samples up (Md in the broadcast; default: as
        :meth:`downlink_samples` says) commits: its uplinks, the full models it sends and, under a
        compressed downlink, one broadcast for every client (none after the last round)."""
        if M not in self._payload:
            self._payload[M] = self.compressor.payload_bytes(self.context(0, M))
        cost = participants * self._payload[M] + dense_syncs * self.dense_bytes
        if not last:
            Md = Md or self.downlink_samples(M)
            if Md not in self._broadcast:
                self._broadcast[Md] = self.downlink.broadcast_bytes(self.context(0, Md))
            cost += self.cfg.clients * self._broadcast[Md]
        return cost

    def downlink_samples(self, M: int | None) -> int | None:
        """M of the broadcast: ``--downlink-samples`` where set, else the uplink's M_t."""
        return self.cfg.downlink_samples or M

    @property
    def splits_directions(self) -> bool:
        """Whether the scheduler chooses the broadcast's M apart from the uplink's (a downlink compressed
        by a method sized by samples, with no ``--downlink-samples``)."""
        comp = self.downlink.compressor
        return self.downlink.compressed and comp.sized_by_samples and not self.cfg.downlink_samples

    # ------------------------------------------------------------------ round t, first half
    def begin_round(self, t: int, reachable: set[int] | None = None) -> tuple[list[int], int | None,
                                                                                dict[int, TrainIns]]:
        """Sample the participants (those of them in ``reachable``, where a driver cannot reach every
        client), choose M_t, and make each participant's catch-up message."""
        cfg = self.cfg
        participants = [k for k in sample_clients(cfg.seed, t, cfg.clients, protocol.clients_per_round(cfg))
                        if reachable is None or k in reachable]
        plans = {k: self.downlink.plan(t, k, self.dense_bytes) for k in participants}
        M = self._choose_samples(t, participants, plans) if cfg.sized_by_samples else None
        set_flat(self.model, self.weights)
        self.asked = participants
        ctx = self.context(t, None)
        return participants, M, {k: self.downlink.message(t, k, M, plans[k], self.weights, ctx) for k in participants}

    def _choose_samples(self, t: int, participants: list[int], plans: dict[int, str]) -> int:
        """M_t up (returned) and the broadcast's M (kept in ``down_log``), from the scheduler."""
        remaining = None
        if self.scheduler.budget is not None:
            committed = self.ledger.total(UP) + self.ledger.total(DOWN) + int(self.downlink.owed.sum())
            remaining = self.scheduler.budget - committed
        dense_syncs = sum(1 for p in plans.values() if p == "model")
        split = self.splits_directions
        # the uplink cosine the split reads: the aggregate's where measured (budgeted runs only; the
        # budget-less adaptive rule keeps reading the clients' mean against --target-cosine)
        up_cos = self.last_cosine if remaining is None else self.last_agg_cosine or self.last_cosine
        M, Md = self.scheduler.choose(
            t, lambda m, md: self.round_cost(m, len(participants), dense_syncs, last=t == self.cfg.rounds, Md=md),
            remaining, up_cos, self.last_down_cosine if split else None,
            None if split else self.cfg.downlink_samples or None)
        self.schedule_log.append(M)
        if self.downlink.compressed:
            self.down_log.append(Md)
        return M

    def sync_message(self, t: int, k: int, M: int | None) -> TrainIns:
        """The message that brings client k to w_t now (counted under round t)."""
        plan = self.downlink.plan(t, k, self.dense_bytes)
        return self.downlink.message(t, k, M, plan, self.weights, self.context(t, None))

    # ------------------------------------------------------------------ round t, second half
    def end_round(self, t: int, M: int | None, updates: list[ClientUpdate],
                  true_mean: torch.Tensor | None = None) -> dict[str, float]:
        """Admit, decode and bound the replies (:meth:`screen`), average them, then move the model
        (:meth:`move`; under a compressed downlink by exactly the broadcast made for the clients).
        ``true_mean``: the mean of the participants' uncompressed updates (every participant that
        trained, replies refused or clipped included: the update FedAvg would have applied), where the
        driver has them (in-process); then the aggregate cosines compare what was applied with it."""
        s, admitted, refused, received = self.screen(t, M, updates)
        agg = aggregate(self.context(t, M), s, self.compressor, weighted=self.cfg.weighted,
                        rule=self.cfg.aggregate, start=self.center, standing=self.standing)
        if self.cfg.aggregate == "cclip" and agg.accepted:
            self.center = agg.delta.clone()
        elif self.cfg.aggregate == "direction" and agg.accepted:
            self.center = history(self.center, agg.delta)
        agg_up = _cosine(agg.delta, true_mean)
        Md, down_cos, applied = self.move(t, M, agg.delta)
        agg_down = _cosine(applied, true_mean) if applied is not None else float("nan")
        self.last_rejected = {**refused, **agg.rejected}
        ok = set(agg.accepted)
        cos = [u.stats["cosine"] for u in s.updates if "cosine" in u.stats and u.client in ok]
        self.last_cosine = float(np.mean(cos)) if cos else None
        self.last_agg_cosine = agg_up if math.isfinite(agg_up) else None
        self.last_down_cosine = down_cos if math.isfinite(down_cos) else None
        return {
            "participants": len(agg.accepted),
            "rejected": len(agg.rejected) + len(refused),
            "missing": len(set(self.asked) - set(received)),
            "clipped": len(agg.clipped),
            "screened": len(agg.screened),
            "cosine": float(np.mean(cos)) if cos else float("nan"),
            "downlink_cosine": down_cos,
            "aggregate_cosine": agg_up,
            "aggregate_downlink_cosine": agg_down,
            "samples": float("nan") if M is None else M,
            "downlink_samples": float(Md) if self.downlink.compressed and Md is not None else float("nan"),
            "compress_seconds": float(sum(u.stats.get("compress_seconds", 0.0) for u in admitted)),
            "train_seconds": float(sum(u.stats.get("train_seconds", 0.0) for u in admitted)),
        }

    def screen(self, t: int, M: int | None, updates: list
               ) -> tuple[Screened, list[ClientUpdate], dict[int, str], dict[int, int]]:
        """Round t's replies, trusted in nothing: envelope checks (:func:`admit`; the bytes that arrived
        go in the ledger), sample counts held to the round's median where partition sizes are unknown,
        then decoded at w_t and held to the round's norm bound (:func:`screen`). Returns the screened
        updates, the admitted replies, the refused ones by client with the reason, and the bytes each
        client sent."""
        ctx = self.context(t, M)
        admitted, refused, received = admit(updates, set(self.asked), self.compressor.payload_bytes(ctx), self.sizes,
                                            exact=self.compressor.fixed_size)
        for k, n in received.items():
            if n:  # bytes that arrived (a reply whose payload was no bytes at all adds none)
                self.ledger.add(t, k, UP, n)
        if self.sizes is None:
            cap_samples(admitted, self.cfg.norm_clip)
        return screen(ctx, admitted, self.compressor, norm_clip=self.cfg.norm_clip), admitted, refused, received

    def move(self, t: int, M: int | None, delta: torch.Tensor) -> tuple[int | None, float, torch.Tensor | None]:
        """Move w_t by the round's aggregate ``delta``: with the dense downlink w_{t+1} = w_t + delta;
        with a compressed one, compress e_s + delta into round t's broadcast and move by exactly what
        it decodes to. Returns the broadcast's M, its cosine (NaN without) and, under a compressed
        downlink, the move applied (w_{t+1} - w_t)."""
        Md = self.down_log[-1] if M is not None and self.down_log else self.downlink_samples(M)
        down_cos, applied = float("nan"), None
        if self.downlink.compressed:
            b = self.downlink.broadcast(t, self.context(t, Md), delta, Md, t == self.cfg.rounds, self.dense_bytes)
            down_cos = b.stats.get("cosine", float("nan"))
            applied = b.weights - self.weights
            self.weights = b.weights
        else:
            self.weights = self.weights + delta
        set_flat(self.model, self.weights)
        return Md, down_cos, applied

    def participations(self) -> int:
        return sum(len(self.ledger.per_client(t, UP)) for t in self.ledger.rounds())

    def state_dict(self) -> dict:
        return {
            "weights": self.weights.cpu(), "downlink": self.downlink.state_dict(), "ledger": self.ledger.state_dict(),
            "scheduler": self.scheduler.state_dict(), "last_cosine": self.last_cosine,
            "last_down_cosine": self.last_down_cosine, "last_agg_cosine": self.last_agg_cosine,
            "schedule_log": list(self.schedule_log),
            "down_log": list(self.down_log),
            "center": None if self.center is None else self.center.cpu(),
            "standing": {k: list(v) for k, v in self.standing.items()},
        }

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        self.weights = state["weights"].to(device)
        set_flat(self.model, self.weights)
        self.downlink.load_state_dict(state["downlink"], device)
        self.ledger.load_state_dict(state["ledger"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.last_cosine = state["last_cosine"]
        self.schedule_log = list(state["schedule_log"])
        self.last_down_cosine = state.get("last_down_cosine")
        self.last_agg_cosine = state.get("last_agg_cosine")
        self.down_log = list(state.get("down_log", []))
        center = state.get("center")
        self.center = None if center is None else center.to(device)
        self.standing = {int(k): (float(v[0]), int(v[1])) for k, v in (state.get("standing") or {}).items()}
