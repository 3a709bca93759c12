"""The in-process simulator: every client in this process, driven by the shared round loop
(:mod:`e3sfc.federated.loop`), which keeps the run's records (:mod:`e3sfc.federated.recorder`) and
checkpoints (:mod:`e3sfc.federated.checkpoint`).

The round itself (sampling, catch-up downlink, client step, server step, E-3SFC
downlink, budget) lives in :mod:`e3sfc.federated.runtime`, shared with the
Flower driver. All randomness is derived from the run's seed and the round and
client ids, so no generator state needs saving: a run resumed from a checkpoint
replays exactly what an uninterrupted run does (tested across processes after a
kill -9, given the same thread count, which the CLI sets from the run's config
before anything is built).

Run folders: :meth:`Simulation.run` holds an exclusive lock on ``RUN_DIR/.lock``
while it writes (a second writer stops with a one-line error), removes temporary
files a killed writer left, and starts a new run only in a folder without a
checkpoint. Checkpoints hold tensors, numbers, strings and bytes only and are read
with ``torch.load(weights_only=True)``: a checkpoint cannot run code, and one that
is corrupt or belongs to another model or run is refused with one line.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import numpy as np
import torch

from .. import protocol
from ..config import RunConfig
from ..data import FedData
from ..errors import ConfigError, Damaged
from .checkpoint import (CHECKPOINT, check_reusable, check_state, locked_run_dir, read_checkpoint, read_config,
                         verify)
from .loop import RoundLoop, resolve_device
from .params import get_flat
from .recorder import RUN_FILES, check_records
from .runtime import ClientRuntime
from .store import ClientStore

log = logging.getLogger(__name__)

__all__ = ["Simulation", "check_memory", "estimate_memory", "available_memory", "CHECKPOINT", "RUN_FILES",
           "check_reusable", "locked_run_dir"]


def _synthetic_sizes(cfg: RunConfig) -> tuple[int, int]:
    """The largest synthetic set of an uplink payload and of a downlink broadcast (0 where a direction is not
    sized by samples)."""
    from ..compress import get_compressor_class

    m = cfg.max_samples if cfg.schedule != "constant" or cfg.budget_bytes else cfg.samples
    down = cfg.resolved_downlink
    down_m = (cfg.downlink_samples or m) if down != "dense" and get_compressor_class(down).sized_by_samples else 0
    return (m if cfg.sized_by_samples else 0), down_m


def _search_evals(cfg: RunConfig, method: str) -> tuple[int, str]:
    """Objective evaluations one synthetic-set search of ``method`` runs at most, and the flag that sets most
    of them (L-BFGS steps x iterations for 3SFC, Adam iterations x unrolled steps for FedSynth)."""
    from ..compress import get_compressor_class

    names = get_compressor_class(method).option_names()
    if "unroll" in names:
        return max(cfg.synth_iters, 1) * cfg.unroll, "synth_iters" if cfg.synth_iters >= cfg.unroll else "unroll"
    if "max_iter" in names:
        return cfg.steps * cfg.max_iter, "steps" if cfg.steps >= cfg.max_iter else "max_iter"
    return 1, "samples"


def estimate_memory(cfg: RunConfig, num_params: int, input_shape, num_classes: int) -> tuple[int, str]:
    """Bytes a run allocates beyond its data and one model, at most, and the flag that drives them.

    Error-feedback residuals (one model-sized vector per client that ever trains, biased
    methods), the 3SFC search (L-BFGS keeps 2 x 100 vectors of the synthetic set's size,
    plus the set's gradient; the uplink's set or the downlink's, ``--downlink-samples``, whichever is larger)
    and FedSynth's unrolled steps (each keeps a model-sized graph); a coarse upper bound for refusing runs
    that cannot fit."""
    from ..compress import get_compressor_class

    per_round = protocol.clients_per_round(cfg)  # as sample_clients draws them
    holders = min(cfg.clients, per_round * cfg.rounds)
    residuals = holders * num_params * 4 if cfg.ef and get_compressor_class(cfg.method).biased else 0
    if cfg.state_memory:  # the store keeps at most that much after a round, plus the round's participants
        residuals = min(residuals, int(cfg.state_memory * 2 ** 20) + per_round * num_params * 4)
    up_m, down_m = _synthetic_sizes(cfg)
    d = int(np.prod(input_shape)) + num_classes
    search = max(up_m, down_m) * d * 4 * (2 * 100 + 16)
    unroll = 0
    for method, m in ((cfg.method, up_m), (cfg.resolved_downlink, down_m)):
        if m and "unroll" in get_compressor_class(method).option_names():
            unroll = max(unroll, cfg.unroll * (num_params + m * d) * 4 * 2)
    parts = {"clients": residuals, "samples" if up_m >= down_m else "downlink_samples": search, "unroll": unroll}
    return sum(parts.values()), max(parts, key=parts.get)


# The time estimate: a lower bound on the arithmetic a run must do (each sample's gradient touches every
# parameter at least twice: forward and backward), at a speed no machine this runs on reaches, so only a
# run that can never finish is refused, never a big one that merely takes long.
FLOPS_PER_SECOND = {"cpu": 1e12, "cuda": 1e15}
MAX_RUN_SECONDS = 365 * 24 * 3600  # a year


def estimate_seconds(cfg: RunConfig, num_params: int, n_train: int, n_test: int) -> tuple[float, str, str]:
    """Seconds the run needs at least (see ``FLOPS_PER_SECOND``), the flag that drives them and the sum
    that gives them, in words: local training, the synthetic-set searches (uplink and downlink), evaluation."""
    per_round = protocol.clients_per_round(cfg)
    shard = max(1, -(-n_train // cfg.clients))
    flops = 2.0 * max(num_params, 1)
    up_m, down_m = _synthetic_sizes(cfg)
    up_evals, up_flag = _search_evals(cfg, cfg.method) if up_m else (0, "samples")
    down_evals, down_flag = _search_evals(cfg, cfg.resolved_downlink) if down_m else (0, "downlink_samples")
    terms = {  # per round: (samples through the model, the flag, what it is)
        "train": (float(per_round) * cfg.local_epochs * shard, "local_epochs",
                  f"{per_round:,} clients x {cfg.local_epochs:,} epochs x {shard:,} samples"),
        "up": (float(per_round) * up_evals * up_m,
               "samples" if up_m > up_evals else up_flag, f"{per_round:,} searches x {up_evals:,} evaluations x "
               f"{up_m:,} synthetic samples"),
        "down": (float(down_evals) * down_m, "downlink_samples" if down_m > down_evals else down_flag,
                 f"{down_evals:,} downlink evaluations x {down_m:,} synthetic samples"),
        "eval": (float(n_test) / cfg.eval_every, "eval_every", f"{n_test:,} test samples / {cfg.eval_every:,}"),
    }
    speed = FLOPS_PER_SECOND[resolve_device(cfg.device)]
    per_round_s = sum(t[0] for t in terms.values()) * flops / speed + 1e-6 * per_round
    seconds = per_round_s * cfg.rounds
    top = max(terms.values(), key=lambda t: t[0])
    flag = top[1] if per_round_s > MAX_RUN_SECONDS else "rounds"
    how = f"{cfg.rounds:,} rounds x ({top[2]}) x {num_params:,} parameters"
    return seconds, flag, how


def _fmt_seconds(s: float) -> str:
    years = s / (365 * 24 * 3600)
    return f"{years:,.0f} years" if years < 1e6 else f"{years:.1e} years"


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo (bytes), or None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(cfg: RunConfig, num_params: int, feature_shape, num_classes: int, n_train: int = 0,
                 n_test: int = 0) -> None:
    """Refuse (ConfigError naming the flag, with the estimate) a run that cannot fit in this machine's
    available memory, or whose time estimate (:func:`estimate_seconds`) is beyond ``MAX_RUN_SECONDS``."""
    need, flag = estimate_memory(cfg, num_params, feature_shape, num_classes)
    avail = available_memory()
    if avail is not None and need > avail:
        what = {"clients": "error-feedback residuals", "unroll": "FedSynth's unrolled steps"}.get(
            flag, "the synthetic-set search")
        raise ConfigError(
            f"--{flag.replace('_', '-')}: this run needs about {need / 1e9:,.1f} GB for {what} "
            f"(--clients {cfg.clients}, --samples {cfg.samples}, --max-samples {cfg.max_samples}, "
            f"--downlink-samples {cfg.downlink_samples}, {num_params:,} parameters); this machine has "
            f"{avail / 1e9:,.1f} GB available")
    seconds, flag, how = estimate_seconds(cfg, num_params, n_train, n_test)
    if seconds > MAX_RUN_SECONDS:
        raise ConfigError(
            f"--{flag.replace('_', '-')}: this run needs at least {_fmt_seconds(seconds)} of compute ({how}, "
            f"at {FLOPS_PER_SECOND[resolve_device(cfg.device)]:.0e} flop/s); expected a run that can finish "
            "within a year")


def check_extend(cfg: RunConfig, done: int | None, rounds: int) -> None:
    """``--resume DIR --rounds N``: refuse (a ConfigError, one line) an extension whose result could
    differ from a run of N rounds from the start: N below the rounds already run (or equal to them short
    of the old end, whose last round then ran as an ordinary one), or a budget (the scheduler spread it
    over the old number of rounds)."""
    done = done if isinstance(done, int) else 0
    if rounds < done or (rounds == done and rounds != cfg.rounds):
        raise ConfigError(f"--rounds: {rounds} is not allowed with --resume; expected more than the {done} rounds "
                          "this run has already run")
    if cfg.budget_bytes:
        raise ConfigError(f"--rounds: a run with --budget-bytes cannot be extended (its scheduler spread "
                          f"{cfg.budget_bytes:,} bytes over {cfg.rounds} rounds); start a run of {rounds} rounds")
    if cfg.engine != "inprocess":
        raise ConfigError("--rounds: only in-process runs can be extended with --resume")


class Simulation(RoundLoop):
    """One federated run with every client in this process. ``run()`` drives it; state is checkpointable."""

    resume_config = staticmethod(read_config)

    def __init__(self, cfg: RunConfig, data: FedData | None = None, out_dir: str | Path | None = None):
        super().__init__(cfg, data, out_dir)
        check_memory(cfg, self.num_params, self.feature_shape, self.data.num_classes, len(self.data.train_y),
                     len(self.data.test_y))
        tx, ty = self.data.train_x.to(self.device), self.data.train_y.to(self.device)
        self.client_data = [(tx[torch.from_numpy(a).to(self.device)], ty[torch.from_numpy(a).to(self.device)])
                            for a, _ in self.splits]
        # the clients' working models (one pair, reused by every in-process client)
        self.client_model, self.train_model = copy.deepcopy(self.model), copy.deepcopy(self.model)
        self.client_model.eval()
        self.train_model.train()  # as built (the server's model is in eval mode)
        spill = self.out_dir / "spill" if self.out_dir is not None and cfg.state_memory else None
        self.store = ClientStore(self._new_client, int(cfg.state_memory * 2 ** 20), spill, self.device)
        self.checkpointer.store = self.store

    @property
    def clients(self) -> dict[int, ClientRuntime]:
        """The client runtimes in memory (``--state-memory`` may hold others on disk: see ``store``)."""
        return dict(self.store.live)

    def _new_client(self, k: int) -> ClientRuntime:
        return ClientRuntime(self.cfg, k, self.feature_shape, self.data.num_classes, self.initial_weights,
                             compressor=self.server.compressor, down=self.server.downlink.compressor)

    def client(self, k: int) -> ClientRuntime:
        """Client k's runtime, its state in memory (read back from disk if it was spilled)."""
        return self.store.get(k)

    def sync(self, t: int, k: int) -> torch.Tensor:
        """Bring client k's replica to w_t now (counted as round t's downlink); returns it."""
        return self.client(k).catch_up(self.server.sync_message(t, k, None), self.client_model)

    def run_round(self, t: int) -> dict[str, float]:
        """Round t, top to bottom: the server's messages; each participant catches up and trains;
        the uplink compressor takes the participants' targets (all at once when it batches, else
        one by one); each participant finishes its update; the server aggregates."""
        participants, M, messages = self.server.begin_round(t)
        comp = self.server.compressor
        size = comp.batch_limit or len(participants)
        updates = []
        true_sum, true_weight = torch.zeros_like(self.server.weights), 0.0  # for the aggregate cosine
        for i in range(0, len(participants), size):
            prepared = {}
            for k in participants[i:i + size]:
                c = self.client(k)
                p = c.prepare(messages[k], self.client_model, c.sgd(self.train_model, *self.client_data[k]))
                if not torch.equal(get_flat(self.client_model), self.server.weights):
                    raise RuntimeError(f"round {t}: client {k}'s replica differs from the server model")
                if c.replica is not None:
                    # bit-identical replicas (checked just above) share one tensor in this process;
                    # nothing mutates it in place, so memory is one copy per version in use, not per client
                    c.replica = self.server.weights
                if p is not None:  # None: no reply (fault injection's drop)
                    a = float(p.num_samples) if self.cfg.weighted else 1.0
                    true_sum.add_(p.delta, alpha=a)
                    true_weight += a
                    p.delta = None
                    prepared[k] = p
            t0 = time.perf_counter()
            results = comp.compress_many([p.target for p in prepared.values()], [p.ctx for p in prepared.values()])
            share = (time.perf_counter() - t0) / max(1, len(prepared))  # each client's compress_seconds
            updates += [self.client(k).finish(p, *r, share) for (k, p), r in zip(prepared.items(), results)]
        row = self.server.end_round(t, M, updates, true_sum / true_weight if true_weight else None)
        self.store.settle()  # --state-memory: spill the least recently used clients beyond the budget
        return row

    @classmethod
    def resume(cls, run_dir: str | Path, data: FedData | None = None, rounds: int | None = None) -> "Simulation":
        """Rebuild a run from ``run_dir/config.json`` and its last checkpoint (read without running code).

        ``rounds``: run to this many rounds instead (``--resume DIR --rounds N``), extending a finished or
        stopped run; the result is that of a run of ``rounds`` from the start (see :func:`check_extend`)."""
        run_dir = Path(run_dir)
        cfg = read_config(run_dir)
        state = read_checkpoint(run_dir)
        old_rounds = cfg.rounds
        if rounds is not None and rounds != cfg.rounds:
            check_extend(cfg, state.get("round") if isinstance(state, dict) else None, rounds)
            cfg = cfg.replace(rounds=rounds)
        try:
            verify(state)  # its checksums and finite numbers, before anything is built from it
        except Damaged as exc:
            raise ConfigError(f"--resume: {run_dir / CHECKPOINT} is damaged: {exc}") from None
        check_records(run_dir)  # metrics.jsonl and ledger.jsonl, before any round runs
        sim = cls(cfg, data=data, out_dir=run_dir)
        try:
            check_state(state, cfg, sim.num_params, sim.server.compressor, sim.server.downlink.compressor,
                        sim.server.context(0, None))
            sim.round = sim.checkpointer.load_state_dict(state)
            if cfg.rounds != old_rounds:
                sim._extend(old_rounds)
        except Damaged as exc:
            raise ConfigError(f"--resume: {run_dir / CHECKPOINT} is damaged: {exc}") from None
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError, OSError) as exc:
            raise ConfigError(f"--resume: {run_dir / CHECKPOINT} does not belong to the run in "
                              f"{run_dir}/config.json ({type(exc).__name__}: {exc})") from None
        log.info("resumed %s at round %d of %d", run_dir, sim.round, cfg.rounds)
        return sim

    def _extend(self, old_rounds: int) -> None:
        """Undo what only the last round of a run of ``old_rounds`` did differently, once the state of
        a checkpoint at that round is loaded into a run of more rounds: its evaluation (made at the last
        round whatever --eval-every says) and its compressed broadcast, which the last round owes to no
        one (a round after it sends it). Nothing else a round does reads the number of rounds (the
        budget scheduler does: check_extend refuses those runs)."""
        self.recorder.extended = True
        if self.round != old_rounds:
            return  # a run stopped before its last round: nothing of its last round happened
        rows = self.recorder.metrics
        if rows and rows[-1]["round"] == old_rounds and old_rounds % self.cfg.eval_every:
            rows.pop()
        down = self.server.downlink
        if down.compressed and old_rounds in down.history:
            down.owed += len(down.history[old_rounds][0])
