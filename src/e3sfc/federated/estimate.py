"""What a run will cost before anything is allocated or written: an upper bound on the memory it
allocates beyond its data and one model, and a lower bound on the arithmetic it must do. A run that
cannot fit in this machine's available memory, or could never finish, is refused with one line naming
the flag that drives the estimate (:func:`check_memory`; every driver calls it before building clients).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import protocol
from ..config import RunConfig
from ..errors import ConfigError
from .loop import resolve_device


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
