"""The in-process simulator: drives the shared server and client runtimes, keeps the
run records, checkpoints and resumes.

The round itself (sampling, catch-up downlink, client step, server step, E-3SFC
downlink, budget) lives in :mod:`e3sfc.federated.runtime`, shared with the
Flower driver. All randomness is derived from the run's seed and the round and
client ids, so no generator state needs saving: a run resumed from a checkpoint
replays exactly what an uninterrupted run does (tested).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import io
from ..compress.synth import run_together, start
from ..config import RunConfig
from ..data import FedData, load_dataset, partition
from ..errors import ConfigError
from ..metrics import DOWN, UP
from ..models import build_model, num_params
from .evaluate import evaluate
from .params import get_flat
from .runtime import MODEL_INIT, ClientRuntime, ServerRuntime, derive_seed

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


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
        model = build_model(cfg.model, data.input_shape, data.num_classes,
                            derive_seed(cfg.seed, MODEL_INIT)).to(self.device)
        self.num_params = num_params(model)
        self.initial_weights = get_flat(model)        # w_1: every party can build it from the seed
        # the clients' working models (one pair, reused by every in-process client)
        self.client_model, self.train_model = copy.deepcopy(model), copy.deepcopy(model)
        self.client_model.eval()
        self.server = ServerRuntime(cfg, model, self.initial_weights.clone(), data.input_shape, data.num_classes,
                                    sizes={k: len(p) for k, p in enumerate(self.parts)})
        self.clients: dict[int, ClientRuntime] = {}
        self.round = 0
        self.metrics: list[dict] = []
        self.elapsed = 0.0

    # convenient views of the server state
    @property
    def weights(self) -> torch.Tensor:
        return self.server.weights

    @property
    def ledger(self):
        return self.server.ledger

    @property
    def model(self):
        return self.server.model

    @property
    def schedule_log(self) -> list[int]:
        return self.server.schedule_log

    def client(self, k: int) -> ClientRuntime:
        if k not in self.clients:
            self.clients[k] = ClientRuntime(self.cfg, k, self.data.input_shape, self.data.num_classes,
                                            self.initial_weights, compressor=self.server.compressor)
        return self.clients[k]

    def sync(self, t: int, k: int) -> torch.Tensor:
        """Bring client k's replica to w_t now (counted as round t's downlink); returns it."""
        return self.client(k).catch_up(self.server.sync_message(t, k, None), self.client_model)

    # ------------------------------------------------------------------ one round
    def run_round(self, t: int) -> dict[str, float]:
        participants, M, messages = self.server.begin_round(t)
        updates, started = [], {}
        for k in participants:
            x, y = self.client_data[k]
            c = self.client(k)
            if self.cfg.batch_search:  # catch up and train now; the searches run together below
                started[k] = start(c.handle_steps(messages[k], self.client_model, self.train_model, x, y))
            else:
                updates.append(c.handle(messages[k], self.client_model, self.train_model, x, y))
            if not torch.equal(get_flat(self.client_model), self.server.weights):
                raise RuntimeError(f"round {t}: client {k}'s replica differs from the server model")
            if c.replica is not None:
                # bit-identical replicas (checked just above) share one tensor in this process;
                # nothing mutates it in place, so memory is one copy per version in use, not per client
                c.replica = self.server.weights
        if started:
            t0 = time.perf_counter()
            done = run_together(started)
            share = (time.perf_counter() - t0) / len(done)  # each client's compress_seconds: an equal share
            updates = [done[k] for k in participants if done[k] is not None]
            for u in updates:
                u.stats["compress_seconds"] = share
        return self.server.end_round(t, M, [u for u in updates if u is not None])  # None: no reply

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
            "dense_bytes_per_transfer": self.server.dense_bytes,
            # what FedAvg sends for the same participants: the dense update up, the model down
            "fedavg_uplink_bytes": self.server.participations() * self.server.dense_bytes,
            "fedavg_downlink_bytes": self.server.participations() * self.server.dense_bytes,
            "downlink": self.cfg.resolved_downlink, "init": self.cfg.resolved_init,
            "schedule": self.cfg.schedule if self.server.synth else None,
            "budget_bytes": self.cfg.budget_bytes or None,
            "samples_per_round": list(self.schedule_log) if self.server.synth else None,
            "wall_seconds": round(self.elapsed, 4),
            "seconds_per_round": round(self.elapsed / self.round, 4) if self.round else None,
            "num_params": self.num_params,
            "uplink_bytes_per_client_round": self.server.compressor.payload_bytes(self.server.context(0, None)),
        }

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        return {
            "round": self.round,
            "server": self.server.state_dict(),
            "clients": {k: c.state_dict() for k, c in self.clients.items()},
            "metrics": list(self.metrics),
            "elapsed": self.elapsed,
            "config": self.cfg.to_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.round = int(state["round"])
        self.server.load_state_dict(state["server"], self.device)
        self.clients = {}
        for k, cs in state["clients"].items():
            self.client(int(k)).load_state_dict(cs, self.device)
        self.metrics = list(state["metrics"])
        self.elapsed = float(state["elapsed"])

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
