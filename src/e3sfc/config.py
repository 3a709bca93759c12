"""The run configuration: one frozen, validated dataclass.

Every field can come from a TOML file (``--config``) and be overridden by a
command-line flag of the same name (``--local-epochs`` sets ``local_epochs``).
Validation raises :class:`~e3sfc.errors.ConfigError` whose message names the
flag, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .compress import available_methods, get_compressor_class, parse_ratio
from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class RunConfig:
    # what to run
    protocol: str = "e3sfc"
    method: str = "fedavg"
    dataset: str = "fmnist"
    emnist_split: str = "balanced"
    model: str = "mlp"
    # federation
    clients: int = 10
    fraction: float = 1.0
    partition: str = "dirichlet"
    alpha: float = 1.0
    rounds: int = 100
    weighted: bool = False
    # local training (plain SGD, momentum 0)
    local_epochs: int = 1
    batch_size: int = 64
    lr: float = 0.01
    lr_decay: float = 0.99
    # data protocol
    holdout: float = 0.0
    train_subset: int = 0
    test_subset: int = 0
    data_dir: str | None = None
    max_len: int = 128
    min_freq: int = 1
    vocab_size: int = 0
    # compression (each method reads its own knobs; docs/design.md §1.1, §1.4)
    samples: int = 1
    steps: int = 10
    max_iter: int = 20
    lambd: float = 0.0
    patience: int = 20
    downlink_patience: int = 0
    batch_search: bool | None = None  # None: automatic (resolved_batch_search)
    feature_bits: int = 32
    warm_start: bool = False
    scales: str = "one"
    ef: bool = True
    ratio: str = "0.01"
    topk_scope: str = "tensor"
    levels: int = 16
    unroll: int = 2
    synth_iters: int = 50
    synth_lr: float = 0.05
    # double-way compression and budget (docs/design.md §1.2, §1.3)
    downlink: str = "auto"
    downlink_ratio: str = ""
    downlink_samples: int = 0
    init: str = "auto"
    schedule: str = "constant"
    budget_bytes: int = 0
    target_cosine: float = 0.5
    max_samples: int = 64
    decay_rate: float = 0.97
    # robustness and fault injection
    norm_clip: float = 3.0
    adversary: str = "none"
    adversaries: int = 0
    round_timeout: float = 120.0
    # run
    engine: str = "inprocess"
    seed: int = 42
    device: str = "cpu"
    threads: int = 0
    eval_every: int = 1
    checkpoint_every: int = 0
    state_memory: float = 0.0        # MB of client tensors kept in memory; 0: no limit (federated/store.py)
    tensorboard: bool = False
    out: str | None = None

    def __post_init__(self) -> None:
        _validate(self)

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    @property
    def resolved_downlink(self) -> str:
        """``auto``: the method's natural downlink (``3sfc`` for e3sfc, ``dense`` for the others)."""
        return self.downlink if self.downlink != "auto" else get_compressor_class(self.method).downlink

    @property
    def resolved_init(self) -> str:
        """``auto``: the method's own choice (e3sfc builds w_1 from the shared seed; the others ship it)."""
        return self.init if self.init != "auto" else get_compressor_class(self.method).init

    @property
    def resolved_downlink_ratio(self) -> str:
        """The downlink compressor's ratio setting (``--downlink-ratio``; empty: the uplink's ``--ratio``)."""
        return self.downlink_ratio or self.ratio

    @property
    def resolved_batch_search(self) -> bool:
        """Whether a round's 3SFC searches run together (``--batch-search``); unset: automatic, on where
        the batched objective was measured faster (benchmarks/RESULTS.md): any model on a GPU, and on a
        CPU the MLP (closed form) and the small convolutional models (``FAST_SEARCH_CPU``). Off for the
        Flower engine, whose clients search apart."""
        if self.batch_search is not None:
            return self.batch_search
        if self.engine != "inprocess":
            return False
        return self.device == "cuda" or self.model in FAST_SEARCH_CPU

    @property
    def sized_by_samples(self) -> bool:
        """Whether the uplink payload grows with ``samples`` (what the budget scheduler sizes)."""
        return get_compressor_class(self.method).sized_by_samples

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_sources(cls, file: str | Path | None = None, **overrides: Any) -> "RunConfig":
        """Defaults, then the TOML ``file``, then ``overrides`` (``None`` values are ignored)."""
        values: dict[str, Any] = {}
        if file is not None:
            values.update(load_toml(file))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        known = {f.name: f for f in fields(cls)}
        clean: dict[str, Any] = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ConfigError(
                    f"unknown setting {key!r}; allowed: {', '.join(sorted(known))}"
                )
            clean[name] = _coerce(name, value, known[name].type)
        return cls(**clean)


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config: file {str(path)!r} does not exist")
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config: {path} is not valid TOML (UTF-8 text expected; {exc})") from None
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {path} ({exc.strerror})") from None
    # allow an optional [run] table
    if "run" in data and isinstance(data["run"], dict):
        data = {**{k: v for k, v in data.items() if k != "run"}, **data["run"]}
    return data


# Models whose batched 3SFC objective beat ten separate ones on a CPU (benchmarks/batch_objective.py:
# MLP 3.5x, ConvNet 1.9x, LeNet 2.3x, RegNet 1.6x); MNISTNet gained nothing, VGG-11 and ResNet-18 lost.
FAST_SEARCH_CPU = ("mlp", "convnet", "convnet-fast", "lenet", "regnet")

_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


def _coerce(name: str, value: Any, type_str: Any) -> Any:
    t = str(type_str).replace(" | None", "")
    if value is None:
        return None
    try:
        if t == "bool":
            if isinstance(value, str):
                low = value.lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            return bool(value)
        if t == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if t == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{_flag(name)}: {value!r} is not a valid {t}") from None


def _require(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{_flag(name)}: {value!r} is not allowed; expected {allowed}")


# method knobs that only some methods take: one set away from its default with no method in the run
# that takes it is an error, not a silent no-op (steps, samples and the like are shared by the
# synthesis methods and commonly kept in one config for every method, so they are not checked)
METHOD_KNOBS = ("feature_bits", "warm_start", "scales", "levels", "topk_scope", "unroll", "synth_iters", "synth_lr")


def _check_knobs_used(c: "RunConfig") -> None:
    used = [get_compressor_class(c.method)]
    if c.resolved_downlink != "dense":
        used.append(get_compressor_class(c.resolved_downlink))
    defaults = {f.name: f.default for f in fields(RunConfig)}
    for knob in METHOD_KNOBS:
        if getattr(c, knob) != defaults[knob] and not any(knob in cls.option_names() for cls in used):
            takers = [m for m in available_methods() if knob in get_compressor_class(m).option_names()]
            _require(False, knob, getattr(c, knob), f"the default with --method {c.method} and --downlink "
                     f"{c.resolved_downlink} (it is a knob of {', '.join(takers)})")
    if c.downlink_samples and not (c.resolved_downlink != "dense" and used[-1].sized_by_samples):
        sized = [m for m in available_methods() if get_compressor_class(m).sized_by_samples]
        _require(False, "downlink_samples", c.downlink_samples, f"0 unless --downlink is a method sized by samples "
                 f"({', '.join(sized)}); --downlink is {c.resolved_downlink}")
    if c.downlink_ratio and not (c.resolved_downlink != "dense" and "ratio" in used[-1].option_names()):
        _require(False, "downlink_ratio", c.downlink_ratio, "unset unless --downlink is a method with a ratio "
                 "(topk, stc)")


def downlink_choices() -> tuple[str, ...]:
    """``--downlink``: auto, dense, or any registered method that can compress the server's aggregate."""
    return ("auto", "dense", *(m for m in available_methods() if get_compressor_class(m).as_downlink))


def choices() -> dict[str, tuple[str, ...]]:
    """The settings that take one of a fixed set of values, and those values."""
    from .data import available_datasets, EMNIST_SPLITS
    from .models import available_models

    return {
        "protocol": ("e3sfc", "authors"),
        "method": available_methods(),
        "dataset": available_datasets(),
        "model": available_models(),
        "partition": ("dirichlet", "iid"),
        "device": ("cpu", "cuda"),
        "emnist_split": tuple(EMNIST_SPLITS),
        "topk_scope": ("tensor", "global"),
        "scales": ("one", "tensor"),
        "feature_bits": ("32", "16", "8"),
        "downlink": downlink_choices(),
        "init": ("auto", "seed", "broadcast"),
        "schedule": ("constant", "decay", "adaptive"),
        "engine": ("inprocess", "flower"),
        "adversary": ("none", *ADVERSARY_KINDS),
    }


def _validate(c: RunConfig) -> None:
    for name, allowed in choices().items():
        if name == "feature_bits":
            continue  # a number: checked below
        value = getattr(c, name)
        _require(value in allowed, name, value, "one of " + ", ".join(allowed))
    _require(c.clients >= 1, "clients", c.clients, "an integer >= 1")
    _require(
        math.isfinite(c.fraction) and 0.0 < c.fraction <= 1.0,
        "fraction", c.fraction, "a number in (0, 1]",
    )
    _require(math.isfinite(c.alpha) and c.alpha > 0, "alpha", c.alpha, "a number > 0")
    _require(c.rounds >= 1, "rounds", c.rounds, "an integer >= 1")
    _require(c.local_epochs >= 1, "local_epochs", c.local_epochs, "an integer >= 1")
    _require(c.batch_size >= 1, "batch_size", c.batch_size, "an integer >= 1")
    _require(math.isfinite(c.lr) and c.lr > 0, "lr", c.lr, "a number > 0")
    _require(
        math.isfinite(c.lr_decay) and 0 < c.lr_decay <= 1.0,
        "lr_decay", c.lr_decay, "a number in (0, 1] (1 switches the decay off)",
    )
    _require(
        math.isfinite(c.holdout) and 0.0 <= c.holdout < 1.0,
        "holdout", c.holdout, "a fraction in [0, 1) (0 uses the official test split)",
    )
    _require(c.train_subset >= 0, "train_subset", c.train_subset, "an integer >= 0 (0 = all)")
    _require(c.test_subset >= 0, "test_subset", c.test_subset, "an integer >= 0 (0 = all)")
    _require(c.max_len >= 1, "max_len", c.max_len, "an integer >= 1 (tokens kept per document)")
    _require(c.min_freq >= 1, "min_freq", c.min_freq, "an integer >= 1")
    _require(c.vocab_size == 0 or c.vocab_size >= 3, "vocab_size", c.vocab_size, "0 (no cap) or an integer >= 3")
    _require(c.samples >= 1, "samples", c.samples, "an integer >= 1")
    _require(c.steps >= 0, "steps", c.steps, "an integer >= 0")
    _require(c.max_iter >= 1, "max_iter", c.max_iter, "an integer >= 1")
    _require(math.isfinite(c.lambd) and c.lambd >= 0, "lambd", c.lambd, "a number >= 0")
    _require(c.patience >= 0, "patience", c.patience, "an integer >= 0 (0 = no early stop)")
    _require(c.feature_bits in (32, 16, 8), "feature_bits", c.feature_bits, "one of 32, 16, 8")
    _require(c.downlink_patience >= 0, "downlink_patience", c.downlink_patience, "an integer >= 0 (0 = no early stop)")
    _require(c.downlink_samples >= 0, "downlink_samples", c.downlink_samples,
             "an integer >= 0 (0 = the uplink's M)")
    _require(1 <= c.levels <= 65535, "levels", c.levels, "an integer in 1..65535")
    _require(c.unroll >= 1, "unroll", c.unroll, "an integer >= 1")
    _require(c.synth_iters >= 0, "synth_iters", c.synth_iters, "an integer >= 0")
    _require(math.isfinite(c.synth_lr) and c.synth_lr > 0, "synth_lr", c.synth_lr, "a number > 0")
    parse_ratio(c.ratio)
    if c.downlink_ratio:
        parse_ratio(c.downlink_ratio, "--downlink-ratio")
    _require(c.budget_bytes >= 0, "budget_bytes", c.budget_bytes, "an integer >= 0 (0 = no budget)")
    _require(math.isfinite(c.target_cosine) and 0 < c.target_cosine < 1, "target_cosine", c.target_cosine,
             "a number in (0, 1)")
    _require(c.max_samples >= c.samples, "max_samples", c.max_samples, f"an integer >= --samples ({c.samples})")
    _require(math.isfinite(c.decay_rate) and 0 < c.decay_rate <= 1, "decay_rate", c.decay_rate, "a number in (0, 1]")
    if c.budget_bytes or c.schedule != "constant":
        flag = "budget_bytes" if c.budget_bytes else "schedule"
        sized = [m for m in available_methods() if get_compressor_class(m).sized_by_samples]
        _require(c.sized_by_samples, flag, getattr(c, flag),
                 f"only with a method whose payload size is set by --samples ({', '.join(sized)}); "
                 f"--method is {c.method}")
    _check_knobs_used(c)
    if c.batch_search:
        _require(c.engine == "inprocess", "batch_search", True,
                 f"only with --engine inprocess (Flower clients search apart); --engine is {c.engine}")
    _require(math.isfinite(c.norm_clip) and (c.norm_clip == 0 or c.norm_clip >= 1), "norm_clip", c.norm_clip,
             "0 (off) or a number >= 1 (multiple of the round's median update norm)")
    _require(0 <= c.adversaries <= c.clients, "adversaries", c.adversaries, f"an integer in 0..--clients ({c.clients})")
    if c.adversary != "none" or c.adversaries:
        _require(c.adversary != "none", "adversaries", c.adversaries,
                 f"0 without --adversary (one of {', '.join(ADVERSARY_KINDS)})")
        _require(c.adversaries >= 1, "adversaries", c.adversaries, f"an integer >= 1 with --adversary {c.adversary}")
    _require(math.isfinite(c.round_timeout) and 0 < c.round_timeout <= 86400, "round_timeout", c.round_timeout,
             "seconds in (0, 86400]")
    _require(c.seed >= 0, "seed", c.seed, "an integer >= 0")
    _require(c.threads >= 0, "threads", c.threads, "an integer >= 0 (0 = torch default)")
    _require(c.eval_every >= 1, "eval_every", c.eval_every, "an integer >= 1")
    _require(math.isfinite(c.state_memory) and c.state_memory >= 0, "state_memory", c.state_memory,
             "a number of MB >= 0 (0 = no limit)")
    _require(c.state_memory == 0 or c.engine == "inprocess", "state_memory", c.state_memory,
             f"only with --engine inprocess (Flower nodes keep their own state); --engine is {c.engine}")
    _require(
        c.checkpoint_every >= 0, "checkpoint_every", c.checkpoint_every,
        "an integer >= 0 (0 = only at the end)",
    )


# --adversary: what a hostile client sends (e3sfc.federated.adversary implements each)
ADVERSARY_KINDS = ("nan", "huge", "scale", "garbage", "wrong-shape", "drop")
