"""A run's records, for any driver (in-process or Flower): one metrics row per evaluated round,
the elapsed time, TensorBoard scalars (``--tensorboard``), and at the end the ledger and the summary.

Run folder files: ``config.json`` (at the start), ``metrics.jsonl`` (a row appended at each
evaluation, never rewritten, except once when a run resumes: the rows written after its checkpoint
are dropped), ``ledger.jsonl`` and ``summary.json`` (when a call to ``run`` ends; the summary only
once the last round is done).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .. import io
from ..config import RunConfig
from ..errors import ConfigError
from ..metrics import DOWN, UP
from ..records import ledger_problem, metrics_problem, read_rows

RUN_FILES = ("config.json", "metrics.jsonl", "ledger.jsonl", "summary.json")
def check_records(out_dir: Path) -> None:
    """Before a resumed run writes anything: metrics.jsonl and ledger.jsonl, where present, hold only
    rows a run writes (a ConfigError naming the file and line otherwise: the resume neither appends
    to a damaged record nor silently replaces it)."""
    for name, problem in (("metrics.jsonl", metrics_problem), ("ledger.jsonl", lambda r, _: ledger_problem(r))):
        path = out_dir / name
        if not path.exists():
            continue
        try:
            read_rows(path, problem)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"--resume: {exc}; expected the rows e3sfc writes (remove the file to have it "
                              "rebuilt from the checkpoint)") from None


class RunRecorder:
    """Metrics rows (kept in ``metrics`` and appended to ``out_dir/metrics.jsonl``), the run's elapsed
    seconds and its summary; ``server`` is the run's :class:`~e3sfc.federated.runtime.ServerRuntime`
    (its ledger, logs and compressor), ``out_dir`` None: nothing is written."""

    def __init__(self, cfg: RunConfig, server, num_params: int, out_dir: Path | None):
        self.cfg, self.server, self.num_params, self.out_dir = cfg, server, num_params, out_dir
        self.metrics: list[dict] = []
        self.elapsed = 0.0
        self.rejected = 0  # updates rejected over the run (every round, evaluated or not)
        self.screened = 0  # updates the direction screen (--aggregate direction) left out over the run
        self.device_asked = cfg.device  # --device as given (auto, cpu, cuda); cfg.device: the one used
        self.extended = False  # a resume with --rounds: config.json is rewritten with the new rounds
        self._tb = None

    def open(self, resumed: bool) -> None:
        """Start writing (under the run folder's lock): a new run removes what a run that never
        checkpointed left and writes config.json; a resumed one rewrites metrics.jsonl, once, with its
        checkpoint's rows (dropping those written after the checkpoint)."""
        assert self.out_dir is not None
        if not resumed:
            for name in RUN_FILES:
                (self.out_dir / name).unlink(missing_ok=True)
            io.write_json(self.out_dir / "config.json", self.cfg.to_dict())
        else:
            if self.extended:  # --resume --rounds N: the run's config now says N (summary.json: once done)
                io.write_json(self.out_dir / "config.json", self.cfg.to_dict())
                (self.out_dir / "summary.json").unlink(missing_ok=True)
            io.write_jsonl(self.out_dir / "metrics.jsonl", self.metrics)

    def record(self, t: int, accuracy: float, loss: float, stats: dict, seconds: float) -> dict[str, Any]:
        """Round t's row (its test accuracy and loss, bytes, ``seconds`` more of run time, the round's
        stats, NaN as None), kept and appended to metrics.jsonl."""
        self.elapsed += seconds
        ledger = self.server.ledger
        row = {
            "round": t, "accuracy": accuracy, "loss": loss,
            "uplink_bytes": ledger.round_bytes(t, UP),
            "downlink_bytes": ledger.round_bytes(t, DOWN),
            "cum_uplink_bytes": ledger.total(UP),
            "cum_downlink_bytes": ledger.total(DOWN),
            "seconds": round(self.elapsed, 4),
            **{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in stats.items()},
        }
        self.metrics.append(row)
        if self.out_dir is not None:
            io.append_jsonl(self.out_dir / "metrics.jsonl", [row])
            self._tensorboard(row)
        return row

    def _tensorboard(self, row: dict) -> None:
        """``--tensorboard``: the row's numbers as scalars in <run folder>/tensorboard."""
        if not self.cfg.tensorboard:
            return
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter  # run() checked that tensorboard is there
            # a resumed run rewrites the rounds after its checkpoint: drop their old events
            self._tb = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=row["round"])
        for k, v in row.items():
            if k != "round" and isinstance(v, (int, float)) and not isinstance(v, bool):
                self._tb.add_scalar(k, v, row["round"])
        self._tb.flush()

    def close(self) -> None:
        """Close the TensorBoard writer (a later ``run`` opens another)."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def finish(self, summary: dict, done: bool) -> None:
        """Write ledger.jsonl and, once the run is ``done``, summary.json (the summary and
        ``rejected_updates``, the updates the server rejected over the run, and ``screened_updates``, those
        the direction screen left out)."""
        assert self.out_dir is not None
        io.write_jsonl(self.out_dir / "ledger.jsonl", self.server.ledger.rows())
        if done:
            io.write_json(self.out_dir / "summary.json", {**summary, "rejected_updates": self.rejected,
                                                          "screened_updates": self.screened,
                                                          "device": self.cfg.device, "device_asked": self.device_asked})

    def summary(self, rounds: int) -> dict:
        """The run's summary after ``rounds`` rounds."""
        cfg, server = self.cfg, self.server
        accs = [m["accuracy"] for m in self.metrics]
        sent = server.participations()
        return {
            "method": cfg.method, "dataset": cfg.dataset, "model": cfg.model,
            "rounds": rounds,
            "final_accuracy": accs[-1] if accs else None,
            "best_accuracy": max(accs) if accs else None,
            "total_uplink_bytes": server.ledger.total(UP),
            "total_downlink_bytes": server.ledger.total(DOWN),
            "dense_bytes_per_transfer": server.dense_bytes,
            # what FedAvg sends for the same participants: the dense update up, the model down
            "fedavg_uplink_bytes": sent * server.dense_bytes,
            "fedavg_downlink_bytes": sent * server.dense_bytes,
            "downlink": cfg.resolved_downlink, "init": cfg.resolved_init,
            "schedule": cfg.schedule if cfg.sized_by_samples else None,
            "budget_bytes": cfg.budget_bytes or None,
            "samples_per_round": list(server.schedule_log) if cfg.sized_by_samples else None,
            "downlink_samples_per_round": list(server.down_log) if server.down_log else None,
            "batch_search": cfg.resolved_batch_search if hasattr(server.compressor, "batch_search") else None,
            # what --payload-bytes picked, each direction whose compressor fitted one (config.json keeps the flags)
            "payload_fit": {way: dict(zip(("feature_res", "samples", "feature_bits", "bytes"), c.fitted))
                            for way, c in (("uplink", server.compressor), ("downlink", server.downlink.compressor))
                            if getattr(c, "fitted", None)} or None,
            "wall_seconds": round(self.elapsed, 4),
            "seconds_per_round": round(self.elapsed / rounds, 4) if rounds else None,
            "num_params": self.num_params,
            # the ledger's mean, to the byte, over the client-rounds that sent something (M_t and coded sizes vary)
            "uplink_bytes_per_client_round": round(server.ledger.total(UP) / sent) if sent else None,
        }

    def state_dict(self) -> dict:
        return {"metrics": list(self.metrics), "elapsed": self.elapsed, "rejected": self.rejected,
                "screened": self.screened}

    def load_state_dict(self, state: dict) -> None:
        self.metrics[:] = state["metrics"]  # the same list: drivers hand it out as their ``metrics``
        self.elapsed = float(state["elapsed"])
        # checkpoints from before the count: the evaluated rounds' (all of them at --eval-every 1)
        self.rejected = int(state.get("rejected", sum(int(r.get("rejected") or 0) for r in self.metrics)))
        self.screened = int(state.get("screened", sum(int(r.get("screened") or 0) for r in self.metrics)))
