"""The round loop every driver shares: the server side of a run (data, test set, model, server
runtime), its records (:class:`~e3sfc.federated.recorder.RunRecorder`) and checkpoints
(:class:`~e3sfc.federated.checkpoint.Checkpointer`), and the loop over rounds. A driver says how a
round reaches the clients (:meth:`RoundLoop.run_round`): in this process
(:class:`~e3sfc.federated.simulator.Simulation`) or through Flower
(:class:`~e3sfc.flower.apps.FlowerSimulation`).
"""

from __future__ import annotations

import logging
import shlex
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import protocol
from ..config import RunConfig
from ..data import FedData, load_dataset, partition
from ..errors import ConfigError, RunStopped
from ..models import build_model, num_params, synthetic_shape
from .checkpoint import Checkpointer, check_reusable, locked_run_dir
from .evaluate import evaluate
from .params import get_flat, set_flat
from .recorder import RunRecorder
from .runtime import MODEL_INIT, ServerRuntime, derive_seed

log = logging.getLogger(__name__)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM stopped a run with a run folder after a round, checkpointed there."""

    def __init__(self, folder: Path, round: int):
        super().__init__(f"interrupted after round {round}; checkpoint written: resume with "
                         f"e3sfc run --resume {shlex.quote(str(folder))}")
        self.folder, self.round = folder, round


@contextmanager
def stop_after_round():
    """While inside: the first SIGINT or SIGTERM asks the loop to stop after the round in progress (the
    returned dict's ``stop`` turns True); a second one stops at once (KeyboardInterrupt). Where signals
    cannot be caught (not the main thread) nothing changes, and a signal the process ignores stays
    ignored."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"] = True
        try:  # a signal that lands inside a write to stderr must not turn a clean stop into a crash
            log.warning("stopping after the round in progress, then a checkpoint (%s again: stop now, that round "
                        "lost)", "Ctrl-C" if signum == signal.SIGINT else "the signal")
        except Exception:  # noqa: BLE001 - the stop itself is what matters
            pass

    # a signal the process was started ignoring (SIGINT in a shell's background job) stays ignored
    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)
           if signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        yield flag
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def resolve_device(name: str) -> str:
    """``--device auto``: cuda where torch sees a GPU, else cpu; cpu and cuda as they are (cuda where
    there is none: a ConfigError)."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device: 'cuda' is not available on this machine; expected auto or cpu")
    return name


class RoundLoop:
    """One federated run driven from this process; subclasses implement ``run_round``."""

    def __init__(self, cfg: RunConfig, data: FedData | None = None, out_dir: str | Path | None = None):
        # the run's device, resolved once: config.json records the device used, summary.json what was asked
        self.device_asked = cfg.device
        cfg = cfg.replace(device=resolve_device(cfg.device))
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        out_dir = out_dir if out_dir is not None else cfg.out  # the run folder: given here, or the config's
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
        self.splits = [protocol.split_shard(cfg, k, p) for k, p in enumerate(self.parts)]  # (train, evaluation)
        tx, ty = data.train_x.to(self.device), data.train_y.to(self.device)
        # the authors' client-side evaluation (see client_accuracy): each client's held-out share
        self.client_eval = [(tx[torch.from_numpy(b).to(self.device)], ty[torch.from_numpy(b).to(self.device)])
                            for _, b in self.splits if len(b)]
        self.test_x, self.test_y = data.test_x.to(self.device), data.test_y.to(self.device)
        model = build_model(cfg.model, data.input_shape, data.num_classes,
                            derive_seed(cfg.seed, MODEL_INIT), vocab_size=data.vocab_size).to(self.device)
        self.num_params = num_params(model)
        self.feature_shape = synthetic_shape(model, data.input_shape)  # one synthetic sample (3SFC, FedSynth)
        self.initial_weights = get_flat(model)        # w_1: every party can build it from the seed
        self.model = model                            # the server's; holds w_t between calls
        self.server = ServerRuntime(cfg, model, self.initial_weights.clone(), self.feature_shape, data.num_classes,
                                    sizes={k: len(p) for k, p in enumerate(self.parts)})
        self.ledger = self.server.ledger
        self.round = 0
        self.recorder = RunRecorder(cfg, self.server, self.num_params, self.out_dir)
        self.recorder.device_asked = self.device_asked
        self.metrics = self.recorder.metrics  # one metrics row per evaluated round
        self.checkpointer = Checkpointer(cfg, self.out_dir, self.server, self.recorder, self.device)

    @property
    def weights(self) -> torch.Tensor:
        return self.server.weights

    @property
    def schedule_log(self) -> list[int]:
        return self.server.schedule_log

    def run_round(self, t: int) -> dict[str, float]:
        """Round t: the server's messages out, the clients' updates in, the server step; its stats."""
        raise NotImplementedError

    def client_accuracy(self) -> float | None:
        """The authors' client-side evaluation: the mean, over the clients that hold out any samples, of
        the accuracy of the model they receive this round (w_t) on their held-out 20%; None without."""
        if not self.client_eval:
            return None
        set_flat(self.model, self.server.weights)
        return float(np.mean([evaluate(self.model, x, y)[0] for x, y in self.client_eval]))

    def run(self, progress: Callable[[int, dict], None] | None = None, stop_after: int | None = None) -> dict:
        """Run to ``cfg.rounds`` (or stop after round ``stop_after``, for tests); returns the summary.
        With a run folder: under its lock, a new run only where check_reusable allows one."""
        if self.out_dir is None:
            return self._rounds(progress, stop_after)
        if self.cfg.tensorboard:
            import importlib.util
            if importlib.util.find_spec("tensorboard") is None:  # say so before anything is written
                raise ConfigError("--tensorboard: needs the tensorboard package (pip install 'tensorboard>=2.10')")
        with locked_run_dir(self.out_dir), stop_after_round() as signalled:
            if self.round == 0:
                check_reusable(self.out_dir)
            self.recorder.open(resumed=self.round > 0)
            return self._rounds(progress, stop_after, signalled)

    def _rounds(self, progress, stop_after, signalled: dict | None = None) -> dict:
        cfg, out = self.cfg, self.out_dir
        last = cfg.rounds if stop_after is None else min(stop_after, cfg.rounds)
        for t in range(self.round + 1, last + 1):
            if signalled is not None and signalled["stop"]:  # Ctrl-C during the last round: it finished
                self.recorder.close()
                self.checkpointer.save(self.round)
                raise Interrupted(out, self.round)
            t0 = time.perf_counter()
            client_acc = self.client_accuracy()
            stats = self.run_round(t)
            if not stats.get("participants") and stats.get("rejected"):
                self._stop(t, stats)
            self.recorder.rejected += int(stats.get("rejected") or 0)
            self.recorder.screened += int(stats.get("screened") or 0)
            if client_acc is not None:
                stats["client_accuracy"] = client_acc
            self.round = t
            row: dict[str, Any] | None = None
            if t % cfg.eval_every == 0 or t == cfg.rounds:
                acc, loss = evaluate(self.model, self.test_x, self.test_y)
                row = self.recorder.record(t, acc, loss, stats, time.perf_counter() - t0)
            else:
                self.recorder.elapsed += time.perf_counter() - t0
            if out is not None and cfg.checkpoint_every and t % cfg.checkpoint_every == 0:
                self.checkpointer.save(t)
            if progress is not None:
                progress(t, row or {})
        summary = self.summary()
        self.recorder.close()
        if out is not None:
            self.checkpointer.save(self.round)
            self.recorder.finish(summary, done=self.round == cfg.rounds)
        return summary

    def _stop(self, t: int, stats: dict) -> None:
        """Round t rejected every update it got: the model cannot move, so the run stops here (a
        RunStopped, exit 1 at the CLI) instead of running on with an untrained model. Round t is not
        recorded and not checkpointed (the last checkpoint stays as it was); with a run folder,
        ledger.jsonl and summary.json say where and why it stopped and count the rejected updates."""
        reasons = self.server.last_rejected
        k = min(reasons) if reasons else None
        why = f"client {k}: {reasons[k]}" if k is not None else "no reason given"
        more = f"; {len(reasons) - 1} more" if len(reasons) > 1 else ""
        hint = "; if local training diverges, lower --lr" if "finite" in why else ""
        message = (f"round {t}: all {len(reasons) or stats.get('rejected')} updates were rejected ({why}{more}), "
                   f"so the model cannot move; the run stops after round {self.round}{hint}")
        self.recorder.rejected += int(stats.get("rejected") or 0)
        self.recorder.close()
        if self.out_dir is not None:
            self.recorder.finish({**self.summary(), "stopped": message}, done=True)
        raise RunStopped(message)

    def summary(self) -> dict:
        return self.recorder.summary(self.round)
