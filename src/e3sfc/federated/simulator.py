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

import torch

from ..config import RunConfig
from ..data import FedData
from ..errors import ConfigError, Damaged
from .checkpoint import (CHECKPOINT, check_reusable, check_state, locked_run_dir, read_checkpoint, read_config,
                         verify)
from .estimate import available_memory, check_memory, estimate_memory
from .loop import RoundLoop
from .params import get_flat
from .recorder import RUN_FILES, check_records
from .runtime import ClientRuntime
from .store import ClientStore

log = logging.getLogger(__name__)

__all__ = ["Simulation", "check_memory", "estimate_memory", "available_memory", "CHECKPOINT", "RUN_FILES",
           "check_reusable", "locked_run_dir"]


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
