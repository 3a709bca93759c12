"""The in-process simulator: the federated loop, run records, checkpoint and resume.

Per round t = 1..T:
1. sample the participants S_t (seeded from (seed, t); all clients at fraction 1)
   and, for the synthesis methods, choose M_t (budget scheduler, DESIGN 1.3);
2. sync: a participant whose replica is behind w_t catches up. Dense downlink:
   it receives the full model w_t. 3SFC downlink: it replays the broadcasts it
   missed, or receives the full model when that is fewer bytes. ``--init seed``
   means every party builds w_1 from the shared seed (nothing sent);
   ``--init broadcast`` ships w_1 to each client at its first round (counted);
3. each participant runs the shared client step (train, EF, compress, serialize);
4. the server runs the shared server step (decode, aggregate). Dense downlink:
   w_{t+1} = w_t + mean. 3SFC downlink (E-3SFC): the server compresses its
   residual plus the mean, applies only what it sends, and pushes the broadcast
   to this round's participants, who decode it onto their replicas;
5. every ``eval_every`` rounds (and at the last) evaluate on the test split.

Downlink bytes per client-round: dense downlink, 4P + 11 for each participant
that is behind; 3SFC downlink, one broadcast (4 (M d + M C + 1) + header) per
participant per round at fraction 1, plus catch-ups as described.

All randomness is derived from the run's seed and the round/client ids, so no
generator state needs saving: a run resumed from a checkpoint replays exactly
what an uninterrupted run does (tested).
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import io
from ..compress import Context, ErrorFeedback, from_config
from ..compress.fedavg import Dense
from ..config import RunConfig
from ..data import FedData, load_dataset, partition
from ..errors import ConfigError
from ..metrics import DOWN, UP, Ledger
from ..models import build_model, num_params
from ..compress.threesfc import ThreeSFC
from ..config import SYNTH_METHODS
from .budget import BudgetScheduler
from .client import ClientUpdate, apply_broadcast, client_lr, client_step
from .evaluate import evaluate
from .params import get_flat, set_flat
from .server import server_downlink, server_step

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for (seed, keys...): independent streams per round/client/purpose."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1, np.uint64)[0] >> np.uint64(1))


# purposes for derive_seed
MODEL_INIT, SAMPLING, TRAINING, COMPRESSION = 1, 2, 3, 4


def sample_clients(seed: int, round: int, clients: int, fraction: float) -> list[int]:
    """Seeded client sampling over ids 0..K-1 (sorted); every client when fraction is 1."""
    m = max(1, int(round_half_up(fraction * clients)))
    if m >= clients:
        return list(range(clients))
    rng = np.random.default_rng(derive_seed(seed, SAMPLING, round))
    return sorted(int(k) for k in rng.choice(clients, m, replace=False))


def round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


class Simulation:
    """One federated run in this process. ``run()`` drives it; state is checkpointable."""

    def __init__(self, cfg: RunConfig, data: FedData | None = None, out_dir: str | Path | None = None):
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device: 'cuda' is not available on this machine; expected cpu")
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        if data is None:
            data = load_dataset(
                cfg.dataset, cfg.data_dir, emnist_split=cfg.emnist_split, holdout=cfg.holdout,
                train_subset=cfg.train_subset, test_subset=cfg.test_subset, seed=cfg.seed,
            )
        self.data = data
        self.parts = partition(data.train_y.numpy(), cfg.clients, cfg.partition, cfg.alpha, cfg.seed)
        tx, ty = data.train_x.to(self.device), data.train_y.to(self.device)
        self.client_data = [(tx[torch.from_numpy(p).to(self.device)], ty[torch.from_numpy(p).to(self.device)])
                            for p in self.parts]
        self.test_x, self.test_y = data.test_x.to(self.device), data.test_y.to(self.device)
        # ``model`` always holds w_t (the decoder / context model); ``train_model`` is scratch.
        self.model = build_model(cfg.model, data.input_shape, data.num_classes,
                                 derive_seed(cfg.seed, MODEL_INIT)).to(self.device)
        self.model.eval()
        self.train_model = copy.deepcopy(self.model)
        self.num_params = num_params(self.model)
        self.weights = get_flat(self.model)
        self.initial_weights = self.weights.clone()  # w_1, what every party can build from the seed
        self.compressor = from_config(cfg, self.context(0, -1))
        self.dense = Dense()
        self.synth_down = cfg.resolved_downlink == "3sfc"
        self.down_comp = ThreeSFC.from_options(**{k: getattr(cfg, k) for k in ("samples", "steps", "max_iter",
                                                                                 "lambd", "patience")})
        self.ef = ErrorFeedback(enabled=cfg.ef)
        self.ledger = Ledger()
        self.counts = np.zeros(cfg.clients, dtype=np.int64)
        # replica versions: v means the client holds w_v (0: nothing yet)
        self.version = np.full(cfg.clients, 1 if cfg.resolved_init == "seed" else 0, dtype=np.int64)
        self.replicas: dict[int, torch.Tensor] = {}           # 3SFC downlink only
        self.owed = np.zeros(cfg.clients, dtype=np.int64)     # bytes of broadcasts not yet delivered
        self.history: dict[int, tuple[bytes, int]] = {}       # round -> (broadcast blob, M)
        self.scheduler = BudgetScheduler(
            cfg.schedule, cfg.budget_bytes or None, cfg.rounds, cfg.samples, cfg.max_samples,
            cfg.target_cosine, cfg.decay_rate,
        )
        self.synth = cfg.method in SYNTH_METHODS
        self.last_cosine: float | None = None
        self.round = 0
        self.metrics: list[dict] = []
        self.schedule_log: list[int] = []
        self.elapsed = 0.0
        self.dense_bytes = self.dense.payload_bytes(self.context(0, -1))
        if self.scheduler.budget is not None:
            m = max(1, round_half_up(cfg.fraction * cfg.clients))
            need_dense = cfg.resolved_downlink == "dense" or cfg.resolved_init == "broadcast"
            self.scheduler.check(lambda M: self.round_cost(M, m, m if need_dense else 0))

    # ------------------------------------------------------------------ context
    def context(self, round: int, client: int, samples: int | None = None) -> Context:
        g = torch.Generator().manual_seed(derive_seed(self.cfg.seed, COMPRESSION, round, client + 1))
        return Context(self.model, self.weights, self.data.input_shape, self.data.num_classes,
                       round=round, client=client, generator=g, samples=samples)

    def round_cost(self, M: int, participants: int, dense_syncs: int) -> int:
        """Bytes that a round with M synthetic samples commits: uplinks, the full models
        it must send, and (3SFC downlink) one broadcast for every client."""
        ctx = self.context(0, -1, samples=M)
        cost = participants * self.compressor.payload_bytes(ctx) + dense_syncs * self.dense_bytes
        if self.synth_down:
            cost += self.cfg.clients * self.down_comp.payload_bytes(ctx)
        return cost

    # ------------------------------------------------------------------ downlink
    def sync(self, t: int, k: int) -> torch.Tensor:
        """Bring client k's replica to w_t, counting the downlink bytes; returns the replica."""
        v = int(self.version[k])
        if v == t:
            if not self.synth_down:
                return self.weights
            if k not in self.replicas:  # --init seed: the client built w_1 from the shared seed
                self.replicas[k] = self.initial_weights.clone()
            return self.replicas[k]
        pending = list(range(v, t))
        replay = (self.synth_down and v >= 1 and all(s in self.history for s in pending)
                  and int(self.owed[k]) <= self.dense_bytes)
        if replay:
            w = self.replicas[k] if k in self.replicas else self.initial_weights.clone()
            for s in pending:
                blob, m = self.history[s]
                w = self.receive_broadcast(w, blob, m, s, k)
                self.ledger.add(t, k, DOWN, len(blob))
        else:  # the full model w_t
            blob = self.dense.encode(self.dense.compress(self.weights, self.context(t, -1))[0])
            w = self.dense.decompress(self.dense.decode(blob, self.context(t, -1)), self.context(t, -1))
            self.ledger.add(t, k, DOWN, len(blob))
        self.owed[k] = 0
        self.version[k] = t
        if self.synth_down:
            self.replicas[k] = w
        return w

    def receive_broadcast(self, replica: torch.Tensor, blob: bytes, m: int, s: int, k: int) -> torch.Tensor:
        """Client k decodes broadcast s onto its own replica (its own model copy)."""
        set_flat(self.train_model, replica)
        ctx = Context(self.train_model, replica, self.data.input_shape, self.data.num_classes,
                      round=s, client=k, samples=m)
        return apply_broadcast(ctx, blob, self.down_comp)

    # ------------------------------------------------------------------ one round
    def choose_samples(self, t: int, participants: list[int]) -> int | None:
        if not self.synth:
            return None
        cfg = self.cfg
        behind = sum(1 for k in participants if self.version[k] == 0
                     or (cfg.resolved_downlink == "dense" and self.version[k] < t))
        remaining = None
        if self.scheduler.budget is not None:
            committed = self.ledger.total(UP) + self.ledger.total(DOWN) + int(self.owed.sum())
            remaining = self.scheduler.budget - committed
        return self.scheduler.choose(t, lambda M: self.round_cost(M, len(participants), behind),
                                     remaining, self.last_cosine)

    def run_round(self, t: int) -> dict[str, float]:
        cfg = self.cfg
        participants = sample_clients(cfg.seed, t, cfg.clients, cfg.fraction)
        M = self.choose_samples(t, participants)
        set_flat(self.model, self.weights)
        updates: list[ClientUpdate] = []
        for k in participants:
            replica = self.sync(t, k)
            if not torch.equal(replica, self.weights):
                raise RuntimeError(f"round {t}: client {k}'s replica differs from the server model")
            x, y = self.client_data[k]
            g = torch.Generator().manual_seed(derive_seed(cfg.seed, TRAINING, t, k))
            u = client_step(
                self.train_model, self.context(t, k, M), x, y, compressor=self.compressor, ef=self.ef,
                epochs=cfg.local_epochs, batch_size=cfg.batch_size,
                lr=client_lr(cfg.lr, cfg.lr_decay, int(self.counts[k])), generator=g,
            )
            self.counts[k] += 1
            self.ledger.add(t, k, UP, len(u.blob))
            updates.append(u)
        server_ctx = self.context(t, -1, M)
        agg = server_step(server_ctx, updates, self.compressor, weighted=cfg.weighted)
        down_cos = None
        if self.synth_down:
            b = server_downlink(server_ctx, agg.delta, self.down_comp, self.ef)
            down_cos = b.stats.get("cosine")
            m = M or self.down_comp.samples
            self.history[t] = (b.blob, m)
            for s in [s for s in self.history if s <= t - max(1, self.dense_bytes // len(b.blob))]:
                del self.history[s]  # older broadcasts: a catch-up would rather get the full model
            sent = set(participants)
            for k in participants:  # push to this round's participants
                self.replicas[k] = self.receive_broadcast(self.replicas[k], b.blob, m, t, k)
                self.version[k] = t + 1
                self.ledger.add(t, k, DOWN, len(b.blob))
            for k in range(cfg.clients):
                if k not in sent:
                    self.owed[k] += len(b.blob)
            self.weights = b.weights
        else:
            self.weights = self.weights + agg.delta
        set_flat(self.model, self.weights)
        cos = [u.stats["cosine"] for u in updates if "cosine" in u.stats]
        self.last_cosine = float(np.mean(cos)) if cos else None
        if M is not None:
            self.schedule_log.append(M)
        return {
            "participants": len(participants),
            "rejected": len(agg.rejected),
            "cosine": float(np.mean(cos)) if cos else float("nan"),
            "downlink_cosine": float("nan") if down_cos is None else float(down_cos),
            "samples": float("nan") if M is None else M,
            "compress_seconds": float(sum(u.stats["compress_seconds"] for u in updates)),
            "train_seconds": float(sum(u.stats["train_seconds"] for u in updates)),
        }

    # ------------------------------------------------------------------ the loop
    def run(self, progress: Callable[[int, dict], None] | None = None, stop_after: int | None = None) -> dict:
        """Run to ``cfg.rounds`` (or stop after round ``stop_after``, for tests); returns the summary."""
        cfg = self.cfg
        if self.out_dir is not None and self.round == 0:
            io.write_json(self.out_dir / "config.json", cfg.to_dict())
        last = cfg.rounds if stop_after is None else min(stop_after, cfg.rounds)
        for t in range(self.round + 1, last + 1):
            t0 = time.perf_counter()
            stats = self.run_round(t)
            self.round = t
            row: dict[str, Any] | None = None
            if t % cfg.eval_every == 0 or t == cfg.rounds:
                acc, loss = evaluate(self.model, self.test_x, self.test_y)
                self.elapsed += time.perf_counter() - t0
                row = {
                    "round": t, "accuracy": acc, "loss": loss,
                    "uplink_bytes": self.ledger.round_bytes(t, UP),
                    "downlink_bytes": self.ledger.round_bytes(t, DOWN),
                    "cum_uplink_bytes": self.ledger.total(UP),
                    "cum_downlink_bytes": self.ledger.total(DOWN),
                    "seconds": round(self.elapsed, 4),
                    **{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in stats.items()},
                }
                self.metrics.append(row)
                if self.out_dir is not None:
                    io.write_jsonl(self.out_dir / "metrics.jsonl", self.metrics)
            else:
                self.elapsed += time.perf_counter() - t0
            if self.out_dir is not None and cfg.checkpoint_every and t % cfg.checkpoint_every == 0:
                self.save_checkpoint()
            if progress is not None:
                progress(t, row or {})
        summary = self.summary()
        if self.out_dir is not None:
            self.save_checkpoint()
            io.write_jsonl(self.out_dir / "ledger.jsonl", self.ledger.rows())
            if self.round == cfg.rounds:
                io.write_json(self.out_dir / "summary.json", summary)
        return summary

    def summary(self) -> dict:
        accs = [m["accuracy"] for m in self.metrics]
        return {
            "method": self.cfg.method, "dataset": self.cfg.dataset, "model": self.cfg.model,
            "rounds": self.round,
            "final_accuracy": accs[-1] if accs else None,
            "best_accuracy": max(accs) if accs else None,
            "total_uplink_bytes": self.ledger.total(UP),
            "total_downlink_bytes": self.ledger.total(DOWN),
            "dense_bytes_per_transfer": self.dense_bytes,
            # what FedAvg sends for the same participants: the dense update up, the model down
            "fedavg_uplink_bytes": self.participations() * self.dense_bytes,
            "fedavg_downlink_bytes": self.participations() * self.dense_bytes,
            "downlink": self.cfg.resolved_downlink, "init": self.cfg.resolved_init,
            "schedule": self.cfg.schedule if self.synth else None,
            "budget_bytes": self.cfg.budget_bytes or None,
            "samples_per_round": list(self.schedule_log) if self.synth else None,
            "wall_seconds": round(self.elapsed, 4),
            "seconds_per_round": round(self.elapsed / self.round, 4) if self.round else None,
            "num_params": self.num_params,
            "uplink_bytes_per_client_round": self.compressor.payload_bytes(self.context(0, -1)),
        }

    def participations(self) -> int:
        return sum(len(self.ledger.per_client(t, UP)) for t in self.ledger.rounds())

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        return {
            "version": self.version.copy(),
            "replicas": {k: v.cpu() for k, v in self.replicas.items()},
            "owed": self.owed.copy(),
            "history": dict(self.history),
            "scheduler": self.scheduler.state_dict(),
            "last_cosine": self.last_cosine,
            "schedule_log": list(self.schedule_log),
            "round": self.round,
            "weights": self.weights.cpu(),
            "counts": self.counts.copy(),
            "ef": self.ef.state_dict(),
            "ledger": self.ledger.state_dict(),
            "metrics": list(self.metrics),
            "elapsed": self.elapsed,
            "config": self.cfg.to_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.round = int(state["round"])
        self.weights = state["weights"].to(self.device)
        set_flat(self.model, self.weights)
        self.counts = np.asarray(state["counts"], dtype=np.int64).copy()
        self.ef.load_state_dict(state["ef"], self.device)
        self.ledger.load_state_dict(state["ledger"])
        self.metrics = list(state["metrics"])
        self.elapsed = float(state["elapsed"])
        self.version = np.asarray(state["version"], dtype=np.int64).copy()
        self.replicas = {int(k): v.to(self.device) for k, v in state["replicas"].items()}
        self.owed = np.asarray(state["owed"], dtype=np.int64).copy()
        self.history = dict(state["history"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.last_cosine = state["last_cosine"]
        self.schedule_log = list(state["schedule_log"])

    def save_checkpoint(self) -> None:
        assert self.out_dir is not None
        io.atomic_write(self.out_dir / CHECKPOINT, lambda f: torch.save(self.state_dict(), f), mode="wb")

    @classmethod
    def resume(cls, run_dir: str | Path, data: FedData | None = None) -> "Simulation":
        """Rebuild a run from ``run_dir/config.json`` and its last checkpoint."""
        run_dir = Path(run_dir)
        cfg_path, ckpt = run_dir / "config.json", run_dir / CHECKPOINT
        if not cfg_path.is_file():
            raise ConfigError(f"--resume: {str(run_dir)!r} is not a run folder (no config.json)")
        if not ckpt.is_file():
            raise ConfigError(f"--resume: {str(run_dir)!r} has no {CHECKPOINT} to resume from")
        import json
        try:
            cfg = RunConfig.from_dict(json.loads(cfg_path.read_text()))
            state = torch.load(ckpt, map_location="cpu", weights_only=False)
        except (ValueError, OSError, RuntimeError, EOFError) as exc:
            raise ConfigError(f"--resume: cannot read the run in {str(run_dir)!r} ({exc})") from None
        sim = cls(cfg, data=data, out_dir=run_dir)
        sim.load_state_dict(state)
        io.write_jsonl(run_dir / "metrics.jsonl", sim.metrics)  # drop rows written after the checkpoint
        log.info("resumed %s at round %d of %d", run_dir, sim.round, cfg.rounds)
        return sim
