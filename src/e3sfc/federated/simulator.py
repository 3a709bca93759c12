"""The in-process simulator: drives the shared server and client runtimes, keeps the
run records, checkpoints and resumes.

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
import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import io, protocol
from ..config import RunConfig
from ..data import FedData, load_dataset, partition
from ..errors import ConfigError
from ..metrics import DOWN, UP
from ..models import build_model, num_params, synthetic_shape
from .evaluate import evaluate
from .params import get_flat, set_flat
from .runtime import MODEL_INIT, ClientRuntime, ServerRuntime, derive_seed
from .store import ClientStore

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
RUN_FILES = ("config.json", "metrics.jsonl", "ledger.jsonl", "summary.json")


@contextmanager
def locked_run_dir(path: Path):
    """Hold an exclusive lock on ``path/.lock`` (a second writer gets a ConfigError naming the folder)
    and remove the temporary files a killed writer left behind."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover (not POSIX): no lock
        fcntl = None
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ConfigError(f"--out: cannot write a run folder at {str(path)!r} ({exc.strerror or exc}); "
                          "expected a writable folder") from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(f"--out: {str(path)!r} is in use by another e3sfc run; wait for it to finish "
                                  "or pick another --out") from None
        for tmp in path.glob(".*.tmp"):  # what io.atomic_write leaves when killed mid-write
            tmp.unlink(missing_ok=True)
        yield
    finally:
        os.close(fd)


def check_reusable(path: Path) -> None:
    """A new run may start in ``path`` only if it holds no checkpointed run and nothing but what an
    e3sfc run writes (an empty folder, or one whose run never checkpointed); else a ConfigError."""
    if (path / CHECKPOINT).exists():
        raise ConfigError(f"--out: {str(path)!r} already holds a run; pass --resume {path} or another --out")
    if not path.is_dir():
        return
    cfg = path / "config.json"
    if cfg.is_file():
        try:
            RunConfig.from_dict(json.loads(cfg.read_text()))
            return  # an e3sfc run that stopped before its first checkpoint: start it again
        except (ValueError, OSError, TypeError, AttributeError):
            pass
    others = [p.name for p in path.iterdir() if p.name != ".lock" and not p.name.endswith(".tmp")]
    if others:
        raise ConfigError(f"--out: {str(path)!r} is not empty and holds no e3sfc run ({others[0]!r} ...); "
                          "expected a new or empty folder")


def estimate_memory(cfg: RunConfig, num_params: int, input_shape, num_classes: int) -> tuple[int, str]:
    """Bytes a run allocates beyond its data and one model, at most, and the flag that drives them.

    Error-feedback residuals (one model-sized vector per client that ever trains, biased
    methods) and the 3SFC search (L-BFGS keeps 2 x 100 vectors of the synthetic set's size,
    plus the set's gradient); a coarse upper bound for refusing runs that cannot fit."""
    from ..compress import get_compressor_class

    per_round = protocol.clients_per_round(cfg)  # as sample_clients draws them
    holders = min(cfg.clients, per_round * cfg.rounds)
    residuals = holders * num_params * 4 if cfg.ef and get_compressor_class(cfg.method).biased else 0
    if cfg.state_memory:  # the store keeps at most that much after a round, plus the round's participants
        residuals = min(residuals, int(cfg.state_memory * 2 ** 20) + per_round * num_params * 4)
    search = 0
    down = cfg.resolved_downlink
    if cfg.sized_by_samples or (down != "dense" and get_compressor_class(down).sized_by_samples):
        m = cfg.max_samples if cfg.schedule != "constant" or cfg.budget_bytes else cfg.samples
        d = int(np.prod(input_shape)) + num_classes
        search = m * d * 4 * (2 * 100 + 16)
    parts = {"clients": residuals, "samples": search}
    return residuals + search, max(parts, key=parts.get)


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo (bytes), or None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


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
                scaling=protocol.input_scaling(cfg), max_len=cfg.max_len, min_freq=cfg.min_freq,
                vocab_size=cfg.vocab_size,
            )
        self.data = data
        self.parts = partition(data.train_y.numpy(), cfg.clients, cfg.partition, cfg.alpha, cfg.seed)
        tx, ty = data.train_x.to(self.device), data.train_y.to(self.device)
        splits = [protocol.split_shard(cfg, k, p) for k, p in enumerate(self.parts)]  # (train, evaluation)
        self.client_data = [(tx[torch.from_numpy(a).to(self.device)], ty[torch.from_numpy(a).to(self.device)])
                            for a, _ in splits]
        self.client_eval = [(tx[torch.from_numpy(b).to(self.device)], ty[torch.from_numpy(b).to(self.device)])
                            for _, b in splits if len(b)]
        self.test_x, self.test_y = data.test_x.to(self.device), data.test_y.to(self.device)
        model = build_model(cfg.model, data.input_shape, data.num_classes,
                            derive_seed(cfg.seed, MODEL_INIT), vocab_size=data.vocab_size).to(self.device)
        self.num_params = num_params(model)
        self.feature_shape = synthetic_shape(model, data.input_shape)  # one synthetic sample (3SFC, FedSynth)
        need, flag = estimate_memory(cfg, self.num_params, self.feature_shape, data.num_classes)
        avail = available_memory()
        if avail is not None and need > avail:
            raise ConfigError(
                f"--{flag}: this run needs about {need / 1e9:,.1f} GB for "
                f"{'error-feedback residuals' if flag == 'clients' else 'the synthetic-set search'} "
                f"(--clients {cfg.clients}, --samples {cfg.samples}, --max-samples {cfg.max_samples}, "
                f"{self.num_params:,} parameters); this machine has {avail / 1e9:,.1f} GB available")
        self.initial_weights = get_flat(model)        # w_1: every party can build it from the seed
        # the clients' working models (one pair, reused by every in-process client)
        self.client_model, self.train_model = copy.deepcopy(model), copy.deepcopy(model)
        self.client_model.eval()
        self.server = ServerRuntime(cfg, model, self.initial_weights.clone(), self.feature_shape, data.num_classes,
                                    sizes={k: len(p) for k, p in enumerate(self.parts)})
        spill = self.out_dir / "spill" if self.out_dir is not None and cfg.state_memory else None
        self.store = ClientStore(self._new_client, int(cfg.state_memory * 2 ** 20), spill, self.device)
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

    # ------------------------------------------------------------------ one round
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

    def _tensorboard(self, row: dict) -> None:
        """``--tensorboard``: the row's numbers as scalars in <run folder>/tensorboard."""
        if not self.cfg.tensorboard:
            return
        if getattr(self, "_tb", None) is None:
            from torch.utils.tensorboard import SummaryWriter  # run() checked that tensorboard is there
            # a resumed run rewrites the rounds after its checkpoint: drop their old events
            self._tb = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=row["round"])
        for k, v in row.items():
            if k != "round" and isinstance(v, (int, float)) and not isinstance(v, bool):
                self._tb.add_scalar(k, v, row["round"])
        self._tb.flush()

    def client_accuracy(self) -> float | None:
        """The authors' client-side evaluation: the mean, over the clients that hold out any samples, of
        the accuracy of the model they receive this round (w_t) on their held-out 20%; None without."""
        if not self.client_eval:
            return None
        set_flat(self.model, self.server.weights)
        return float(np.mean([evaluate(self.model, x, y)[0] for x, y in self.client_eval]))

    # ------------------------------------------------------------------ the loop
    def run(self, progress: Callable[[int, dict], None] | None = None, stop_after: int | None = None) -> dict:
        """Run to ``cfg.rounds`` (or stop after round ``stop_after``, for tests); returns the summary."""
        if self.out_dir is None:
            return self._run(progress, stop_after)
        if self.cfg.tensorboard:
            import importlib.util
            if importlib.util.find_spec("tensorboard") is None:  # say so before anything is written
                raise ConfigError("--tensorboard: needs the tensorboard package (pip install 'e3sfc[tensorboard]')")
        with locked_run_dir(self.out_dir):
            if self.round == 0:
                check_reusable(self.out_dir)
                for name in RUN_FILES:  # what a run that never checkpointed left
                    (self.out_dir / name).unlink(missing_ok=True)
                io.write_json(self.out_dir / "config.json", self.cfg.to_dict())
            else:
                io.write_jsonl(self.out_dir / "metrics.jsonl", self.metrics)  # drop rows written after the checkpoint
            return self._run(progress, stop_after)

    def _run(self, progress, stop_after) -> dict:
        cfg = self.cfg
        last = cfg.rounds if stop_after is None else min(stop_after, cfg.rounds)
        for t in range(self.round + 1, last + 1):
            t0 = time.perf_counter()
            client_acc = self.client_accuracy()
            stats = self.run_round(t)
            if client_acc is not None:
                stats["client_accuracy"] = client_acc
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
                    self._tensorboard(row)
            else:
                self.elapsed += time.perf_counter() - t0
            if self.out_dir is not None and cfg.checkpoint_every and t % cfg.checkpoint_every == 0:
                self.save_checkpoint()
            if progress is not None:
                progress(t, row or {})
        summary = self.summary()
        if getattr(self, "_tb", None) is not None:
            self._tb.close()
            self._tb = None
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
            "schedule": self.cfg.schedule if self.cfg.sized_by_samples else None,
            "budget_bytes": self.cfg.budget_bytes or None,
            "samples_per_round": list(self.schedule_log) if self.cfg.sized_by_samples else None,
            "downlink_samples_per_round": list(self.server.down_log) if self.server.down_log else None,
            "batch_search": self.cfg.resolved_batch_search if hasattr(self.server.compressor, "batch_search") else None,
            "wall_seconds": round(self.elapsed, 4),
            "seconds_per_round": round(self.elapsed / self.round, 4) if self.round else None,
            "num_params": self.num_params,
            "uplink_bytes_per_client_round": self.server.compressor.payload_bytes(self.server.context(0, None)),
        }

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self, spilled: dict[int, dict] | None = None) -> dict:
        """The run's state; ``spilled``: the snapshot entries of the clients on disk (save_checkpoint)."""
        clients = {k: c.state_dict() for k, c in self.store.live.items()}
        for k, (c, _) in self.store.cold.items():
            if spilled is None:
                raise RuntimeError("clients are spilled to disk: their state is in a checkpoint's snapshot")
            clients[k] = {**c.state_dict(), "spilled": spilled[k]}
        return {
            "round": self.round,
            "server": self.server.state_dict(),
            "clients": clients,
            "metrics": list(self.metrics),
            "elapsed": self.elapsed,
            "config": self.cfg.to_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.round = int(state["round"])
        self.server.load_state_dict(state["server"], self.device)
        self.store.live.clear()
        self.store.cold.clear()
        if self.store.folder is not None and self.store.folder.exists():
            shutil.rmtree(self.store.folder)  # the stopped run's spills: the checkpoint's snapshot replaces them
        for k, cs in state["clients"].items():
            c = self._new_client(int(k))
            c.load_state_dict(cs, self.device)
            if "spilled" in cs:
                self.store.restore(self.out_dir, int(k), c, cs["spilled"])
            else:
                self.store.live[int(k)] = c
        self.metrics = list(state["metrics"])
        self.elapsed = float(state["elapsed"])

    def save_checkpoint(self) -> None:
        assert self.out_dir is not None
        spilled = self.store.snapshot(self.out_dir, self.round)
        io.atomic_write(self.out_dir / CHECKPOINT, lambda f: torch.save(self.state_dict(spilled), f), mode="wb")
        ClientStore.prune(self.out_dir, f"state-r{self.round}" if spilled else None)

    @staticmethod
    def resume_config(run_dir: str | Path) -> RunConfig:
        """The config of the run in ``run_dir`` (read before anything is built, so that settings that
        change numerics, such as the thread count, can be applied first)."""
        run_dir = Path(run_dir)
        cfg_path, ckpt = run_dir / "config.json", run_dir / CHECKPOINT
        if not cfg_path.is_file():
            raise ConfigError(f"--resume: {str(run_dir)!r} is not a run folder (no config.json)")
        if not ckpt.is_file():
            raise ConfigError(f"--resume: {str(run_dir)!r} has no {CHECKPOINT} to resume from (its run never "
                              "checkpointed: start it again with --out)")
        try:
            values = json.loads(cfg_path.read_text())
            if not isinstance(values, dict):
                raise ValueError("not a JSON object")
            return RunConfig.from_dict(values)
        except (ValueError, OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--resume: {cfg_path} is not a readable run config ({exc})") from None

    @classmethod
    def resume(cls, run_dir: str | Path, data: FedData | None = None) -> "Simulation":
        """Rebuild a run from ``run_dir/config.json`` and its last checkpoint (read without running code)."""
        run_dir = Path(run_dir)
        cfg = cls.resume_config(run_dir)
        ckpt = run_dir / CHECKPOINT
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a corrupt or foreign file; none may escape
            raise ConfigError(f"--resume: {ckpt} is not a readable e3sfc checkpoint "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
        sim = cls(cfg, data=data, out_dir=run_dir)
        try:
            sim._check_state(state)
            sim.load_state_dict(state)
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError, OSError) as exc:
            raise ConfigError(f"--resume: {ckpt} does not belong to the run in {run_dir}/config.json "
                              f"({type(exc).__name__}: {exc})") from None
        log.info("resumed %s at round %d of %d", run_dir, sim.round, cfg.rounds)
        return sim

    def _check_state(self, state) -> None:
        """Shapes and ranges of a checkpoint against this run, before any of it is used."""
        if not isinstance(state, dict) or not isinstance(state.get("server"), dict):
            raise ValueError("not an e3sfc checkpoint")
        defaults = RunConfig().to_dict()  # settings added since the checkpoint was written: their defaults
        if {**defaults, **(state.get("config") or {})} != {**defaults, **self.cfg.to_dict()}:
            raise ValueError("its config differs from config.json")
        if not isinstance(state["round"], int) or not 0 <= state["round"] <= self.cfg.rounds:
            raise ValueError(f"round {state['round']!r} is outside 0..{self.cfg.rounds}")
        down = state["server"]["downlink"]
        if len(down["version"]) != self.cfg.clients or len(down["owed"]) != self.cfg.clients:
            raise ValueError(f"its downlink state is for {len(down['version'])} clients, not {self.cfg.clients}")
        shape = (self.num_params,)
        tensors = [state["server"]["weights"], *state["server"]["downlink"]["ef"]["residuals"].values()]
        for k, c in state["clients"].items():
            if not (isinstance(k, int) and 0 <= k < self.cfg.clients):
                raise ValueError(f"client id {k!r} is outside 0..{self.cfg.clients - 1}")
            tensors += [v for v in (c["replica"], c["residual"]) if v is not None]
            for name, n in (c.get("spilled") or {}).get("layout", []):
                if name in ("replica", "residual") and n != self.num_params:
                    raise ValueError(f"client {k}'s spilled {name} has {n} numbers; this run's model has "
                                     f"{self.num_params:,} parameters")
        starts = [down.get("start"), *(c.get("start") for c in state["clients"].values())]
        per_sample = int(np.prod(self.feature_shape)) + self.data.num_classes
        for v in (v for v in starts if v is not None):  # warm starts: M_s whole samples of features
            if not (isinstance(v, torch.Tensor) and v.dim() == 1 and v.is_floating_point() and v.numel()
                    and v.numel() % per_sample == 0):
                raise ValueError(f"a warm start is {getattr(v, 'shape', type(v).__name__)}; expected a whole "
                                 f"number of samples of {per_sample} numbers")
        for v in tensors:
            if not isinstance(v, torch.Tensor) or tuple(v.shape) != shape or v.dtype != torch.float32:
                raise ValueError(f"a model-sized tensor is {getattr(v, 'shape', type(v).__name__)}; "
                                 f"this run's model has {self.num_params:,} parameters")
