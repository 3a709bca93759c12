"""The run configuration: one frozen, validated dataclass.

Every field can come from a TOML file (``--config``) or a Flower run config
(:meth:`RunConfig.from_run_config`) and be overridden by a command-line flag of
the same name (``--local-epochs`` sets ``local_epochs``). Validation raises
:class:`~e3sfc.errors.ConfigError` whose message names the flag, the value and
what is allowed.

The run-level settings are declared here. The compression methods' own knobs
(``samples``, ``feature_bits``, ``levels``, ...) are declared in each method's
file (``OPTIONS``, a tuple of :class:`~e3sfc.compress.base.Option`); they become
fields of :class:`RunConfig` (:func:`method_settings`, :func:`_with_method_settings`),
are validated from their declared bounds, and the CLI builds its flags and help
from the same declarations (docs/design.md §2.1).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import textwrap
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from .compress import available_methods, get_compressor_class, has_ratio, parse_ratio
from .compress.base import Option
from .errors import ConfigError, shorten

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def method_settings() -> dict[str, Option]:
    """The registered methods' declared run settings (``Option.setting``), by name, in the order of the
    registry and of each method's declaration. A setting several methods take (``samples``) is one
    declaration object that each of them lists."""
    out: dict[str, Option] = {}
    for m in available_methods():
        for o in get_compressor_class(m).options:
            if o.setting and out.setdefault(o.name, o) != o:
                raise TypeError(f"method {m!r} declares the setting {o.name!r} unlike another method; a shared "
                                "setting must be one Option that each method lists")
    return out


def takers(name: str) -> tuple[str, ...]:
    """The registered methods that take the option ``name``."""
    return tuple(m for m in available_methods() if name in get_compressor_class(m).option_names())


def _with_method_settings(after: str):
    """Class decorator: add each of :func:`method_settings` as a field (its declared type and default)
    right after the field ``after``, then make the class a frozen dataclass."""
    def wrap(cls):
        own = dict(cls.__dict__["__annotations__"])
        clash = sorted(set(own) & set(method_settings()))
        if clash:
            raise TypeError(f"method setting(s) {', '.join(clash)} clash with run settings of the same name")
        annotations = {}
        for name, kind in own.items():
            annotations[name] = kind
            if name == after:
                for o in method_settings().values():
                    annotations[o.name] = o.type.__name__
                    setattr(cls, o.name, o.default)
        cls.__annotations__ = annotations
        return dataclass(frozen=True)(cls)
    return wrap


# The run-level settings' one-line descriptions, the one text of RunConfig's docstring (its "Settings"
# section) and of `e3sfc run --help`; each method's own knobs carry theirs in their declaration
# (compress/*.py: OPTIONS). A description that states its default itself says "(default".
HELP = {
    "protocol": "e3sfc (the project's training protocol) or authors (the authors' code, row by row: lr decay, "
                "client 80/20 split, [0, 1] inputs, int(K f), ...; see configs/authors.toml and docs/deviations.md)",
    "method": "compression method (fedavg, ...)",
    "dataset": "mnist, fmnist, fmnist-rgb32 (Fashion-MNIST padded to 3x32x32), emnist, cifar10, cifar100, digits; "
               "text: agnews, imdb, sogou",
    "emnist_split": "EMNIST split (balanced, byclass, bymerge, digits, letters, mnist)",
    "model": "mlp, mnistnet, convnet (the authors'), convnet-fast, lenet, quickcnn (Flower's quickstart CNN), "
             "resnet18, vgg11, regnet; text: textbag, transformer",
    "clients": "number of clients K",
    "fraction": "fraction of clients sampled per round, in (0, 1]",
    "partition": "dirichlet (label skew) or iid",
    "alpha": "Dirichlet concentration (smaller = more skewed)",
    "rounds": "communication rounds T",
    "weighted": "weight the mean by client sample counts (off: the uniform mean)",
    "local_epochs": "local SGD epochs per round",
    "batch_size": "local batch size",
    "lr": "client SGD learning rate",
    "lr_decay": "multiply a client's lr by this each time it trains (1 = off)",
    "holdout": "hold out this fraction of train as the test set (authors' protocol); 0 = official test split",
    "train_subset": "use a seeded random subset of this many training samples (0 = all)",
    "test_subset": "use a seeded random subset of this many test samples (0 = all)",
    "data_dir": "folder holding the dataset files",
    "max_len": "text: tokens kept per document (the rest cut; shorter ones padded)",
    "min_freq": "text: a word enters the vocabulary after this many occurrences in the training split",
    "vocab_size": "text: cap on the vocabulary, the two specials included (0 = no cap)",
    "downlink_patience": "E-3SFC: the same for the server's downlink search (default 0: its one search a round "
                         "reaches every client, so it runs all evaluations)",
    "state_memory": "simulator: MB of client state (error-feedback residuals, replicas) kept in memory; the least "
                    "recently used clients beyond it are spilled to <out>/spill (0 = no limit)",
    "batch_search": "simulator: run a round's 3SFC searches together, their objective evaluations batched; "
                    "auto: on for any model on a GPU and for mlp, convnet, convnet-fast, lenet, regnet on a CPU",
    "ef": "error feedback for the biased methods (--no-ef for the ablation)",
    "ratio": "topk/stc: kept fraction in (0, 1], match:METHOD for equal uplink bytes, or bytes:N (at most N "
             "bytes a payload)",
    "downlink": "auto (the method's own: 3sfc for e3sfc, else dense), dense (full model), or a method that "
                "compresses the server's aggregate with a server residual: 3sfc, topk, stc, sign, qsgd, fedsynth",
    "downlink_ratio": "topk/stc downlink: kept fraction, match:METHOD or bytes:N (default: the uplink's --ratio)",
    "downlink_samples": "3sfc/fedsynth downlink: synthetic samples M of each broadcast (default 0: the uplink's M_t)",
    "init": "auto, seed (every party builds w_1 from the seed: nothing sent) or broadcast (w_1 shipped, counted)",
    "schedule": "budget schedule for the synthetic samples M_t: constant, decay or adaptive",
    "budget_bytes": "total bytes (up + down) for the whole run; 0 = no budget",
    "target_cosine": "adaptive schedule: raise M_t below this mean cosine, lower it above",
    "max_samples": "largest M_t a schedule may choose",
    "decay_rate": "decay schedule: gamma, the per-round factor of the budget share",
    "norm_clip": "robust aggregation: scale each decoded update down to at most this multiple of the round's "
                 "median update norm (0 = off)",
    "aggregate": "robust aggregation: mean (of the bounded updates), cclip (centered clipping around a robust "
                 "center: holds colluding clients to a bounded pull) or direction (the mean of the updates that do "
                 "not pull back against the way the model has been moving: leaves out sign-flipped ones)",
    "adversary": "fault injection: what the hostile clients send (nan, huge, scale, collude, garbage, wrong-shape, "
                 "drop)",
    "adversaries": "fault injection: how many of the K clients are hostile (a seeded choice)",
    "round_timeout": "Flower: seconds the server waits for a round's replies before it goes on without the rest",
    "engine": "inprocess (this process) or flower (Flower's simulation engine, one virtual node per client)",
    "seed": "the run's seed; all randomness derives from it",
    "device": "auto (cuda where available, else cpu), cpu or cuda; config.json records the device used",
    "threads": "torch CPU threads (0 = torch default)",
    "eval_every": "evaluate on the test split every N rounds (and at the end)",
    "checkpoint_every": "write a checkpoint every N rounds (0 = only at the end); Ctrl-C or SIGTERM always "
                        "finishes the round in progress and writes one (a second Ctrl-C stops at once)",
    "tensorboard": "also log every metric to TensorBoard event files in <run folder>/tensorboard (needs the "
                   "tensorboard extra)",
    "out": "run folder (default runs/<method>-<dataset>-<model>-<time>)",
}


@_with_method_settings(after="batch_search")
class RunConfig:
    """One run's settings, frozen and validated when made (a ConfigError names the flag, the value and
    what is allowed). ``RunConfig.from_sources(file, **overrides)``: defaults, then a TOML file, then
    keyword overrides; ``replace(**changes)``: a copy with changes. Every setting is also a TOML key and
    an ``e3sfc run`` flag (``local_epochs``: ``--local-epochs``); the Settings section below is made from
    the same descriptions as ``e3sfc run --help``."""

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
    # compression (docs/design.md §1.1, §1.4): the run's own settings; the methods' knobs (samples, steps,
    # feature_bits, levels, ...) follow batch_search, added from each method's declared OPTIONS
    ratio: str = "0.01"               # topk/stc: a fraction, match:METHOD or bytes:N (resolved by build_compressor)
    ef: bool = True
    batch_search: bool | None = None  # None: automatic (resolved_batch_search)
    # double-way compression and budget (docs/design.md §1.2, §1.3)
    downlink_patience: int = 0        # the server's search's patience (3sfc's patience for the uplink)
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
    aggregate: str = "mean"          # mean, cclip (centered clipping) or direction: federated.server.AGGREGATES
    adversary: str = "none"
    adversaries: int = 0
    round_timeout: float = 120.0
    # run
    engine: str = "inprocess"
    seed: int = 42
    device: str = "auto"             # auto: cuda where available, else cpu (resolved once: loop.resolve_device)
    threads: int = 0
    eval_every: int = 1
    checkpoint_every: int = 10
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
        the batched objective is faster (benchmarks/RESULTS.md): any model on a GPU, and on a
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
            types = {f.name: f.type for f in fields(cls)}
            for key, value in values.items():  # every value of the file, also those a flag overrides
                name = key.replace("-", "_")
                if name in types:  # an unknown key: from_dict names it
                    try:
                        _coerce(name, value, types[name])
                    except ConfigError as exc:
                        raise ConfigError(f"--config: {file}: {exc}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values)

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> "RunConfig":
        """A Flower run config (flat keys as the CLI flags, kebab-case: ``samples``, ``feature-bits``;
        ``""`` leaves a setting unset) -> RunConfig, every key a run setting (an unknown one is an error)."""
        return cls.from_dict({k: v for k, v in run_config.items() if v != ""})

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


def default_text(name: str) -> str:
    """The default of the setting ``name`` as the help shows it: ``true``/``false``, ``auto`` for an unset
    switch (None: decided by the run), ``unset`` for an unset value, else the value."""
    f = {f.name: f for f in fields(RunConfig)}[name]
    boolean = str(f.type) in ("bool", "bool | None")
    if f.default in (None, ""):
        return "auto" if boolean else "unset"
    return str(f.default).lower() if boolean else str(f.default)


def describe(name: str) -> str:
    """The setting ``name``'s one-line description with its default, once: a method knob's declared help
    or the run setting's (``HELP``), then ``(default: ...)`` unless it says its default itself."""
    options = method_settings()
    about = options[name].help if name in options else HELP.get(name, "")
    return about if "(default" in about else f"{about} (default: {default_text(name)})"


def _settings_doc() -> str:
    """RunConfig's "Settings" section: each field, its type and :func:`describe`'s text."""
    lines = ["", "", "    Settings (each also a TOML key and the flag --name-with-dashes):", ""]
    for f in fields(RunConfig):
        lines += [f"    {f.name} : {f.type}",
                  textwrap.fill(describe(f.name), 100, initial_indent=" " * 8, subsequent_indent=" " * 8)]
    return "\n".join(lines) + "\n"


RunConfig.__doc__ = (RunConfig.__doc__ or "").rstrip() + _settings_doc()


def options_from_run_config(method: str, run_config: Mapping[str, Any]) -> dict[str, Any]:
    """``method``'s options found in a Flower run config (keys as the CLI flags, kebab-case:
    ``feature-bits``; ``""`` = unset), coerced to their declared types and checked against their
    declared bounds; keys that are not the method's options (the app's own) are left out. For
    ``make_compressor(method, **options)``, e.g. in an app that uses :mod:`e3sfc.flower.addon`."""
    out: dict[str, Any] = {}
    for o in get_compressor_class(method).options:
        for key in (o.name.replace("_", "-"), o.name):
            if key in run_config and run_config[key] != "":
                value = _coerce(o.name, run_config[key], o.type.__name__)
                _require(o.accepts(value), o.name, value, o.allowed())
                out[o.name] = value
                break
    return out


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config: file {str(path)!r} does not exist")
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config: {path} is not valid TOML (UTF-8 text expected; {exc})") from None
    except RecursionError:  # arrays or tables nested thousands deep
        raise ConfigError(f"--config: {path} nests arrays or tables too deeply to read; expected flat "
                          "settings (name = value), optionally under [run]") from None
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

INT64_MAX = 2 ** 63 - 1  # every integer setting must fit in int64 (torch, numpy and the checkpoint keep them so)


def _coerce(name: str, value: Any, type_str: Any) -> Any:
    t = str(type_str).replace(" | None", "")
    if value is None:
        return None
    if isinstance(value, (dict, list, tuple)):  # a TOML table or array where one value belongs
        raise ConfigError(f"{_flag(name)}: a {'table' if isinstance(value, dict) else 'list'} is not allowed; "
                          f"expected one {t} value")
    try:
        out = _convert(value, t)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{_flag(name)}: {_shown(value)} is not a valid {t}") from None
    if t == "int" and not -INT64_MAX - 1 <= out <= INT64_MAX:
        raise ConfigError(f"{_flag(name)}: {_shown(value)} is not allowed; expected an integer that fits in 64 "
                          f"bits (at most {INT64_MAX:,})")
    return out


def _convert(value: Any, t: str) -> Any:
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
    if isinstance(value, (int, float)) and not isinstance(value, bool):  # ratio = 0.01 in a TOML file
        return str(value)
    if not isinstance(value, str):  # a TOML date or boolean where text belongs
        raise TypeError
    return value


def _shown(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (an error line stays one short line)."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        text = f"an integer of {value.bit_length()} bits"
    return shorten(text, limit)


def _require(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{_flag(name)}: {_shown(value)} is not allowed; expected {allowed}")


def _check_knobs_used(c: "RunConfig") -> None:
    """A method knob set away from its default with no method in the run that takes it is an error, not a
    silent no-op (except those declared ``check_unused=False``: steps, samples and the like are shared by
    the synthesis methods and commonly kept in one config for every method)."""
    used = [get_compressor_class(c.method)]
    if c.resolved_downlink != "dense":
        used.append(get_compressor_class(c.resolved_downlink))
    # a --ratio match:M that a method in the run uses (the uplink's; the downlink's, where --downlink-ratio
    # does not replace it) sizes by method M's payload, built with M's own knobs (--rank ...)
    down_ratio = c.resolved_downlink != "dense" and has_ratio(c.resolved_downlink)
    used_ratios = [c.ratio] if has_ratio(c.method) or (down_ratio and not c.downlink_ratio) else []
    used_ratios += [c.downlink_ratio] if down_ratio and c.downlink_ratio else []
    matched = [r.strip()[len("match:"):] for r in used_ratios if isinstance(r, str) and r.strip().startswith("match:")]
    matched = [m for m in matched if m in available_methods()]
    for knob, o in method_settings().items():
        if (o.check_unused and getattr(c, knob) != o.default
                and not any(knob in cls.option_names() for cls in [*used, *map(get_compressor_class, matched)])):
            _require(False, knob, getattr(c, knob), f"the default with --method {c.method} and --downlink "
                     f"{c.resolved_downlink} (it is a knob of {', '.join(takers(knob))}, or of the method "
                     "a --ratio match:METHOD names)")
    if c.feature_init != "noise" and "feature_init" not in get_compressor_class(c.method).option_names():
        _require(False, "feature_init", c.feature_init, f"noise with --method {c.method}: only the clients' search "
                 f"starts from their data ({', '.join(takers('feature_init'))} as the uplink method); the "
                 "server's has none")
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
    """The settings that take one of a fixed set of values, and those values (as text)."""
    return {**_run_choices(), **{name: tuple(map(str, o.choices)) for name, o in method_settings().items()
                                 if o.choices}}


def _run_choices() -> dict[str, tuple[str, ...]]:
    from .data import available_datasets, EMNIST_SPLITS
    from .models import available_models

    return {
        "protocol": ("e3sfc", "authors"),
        "method": available_methods(),
        "dataset": available_datasets(),
        "model": available_models(),
        "partition": ("dirichlet", "iid"),
        "device": ("auto", "cpu", "cuda"),
        "emnist_split": tuple(EMNIST_SPLITS),
        "downlink": downlink_choices(),
        "init": ("auto", "seed", "broadcast"),
        "schedule": ("constant", "decay", "adaptive"),
        "engine": ("inprocess", "flower"),
        "aggregate": ("mean", "cclip", "direction"),
        "adversary": ("none", *ADVERSARY_KINDS),
    }


def _validate(c: RunConfig) -> None:
    for name, allowed in _run_choices().items():
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
    for name, o in method_settings().items():  # each method knob within its declared bounds
        _require(o.accepts(getattr(c, name)), name, getattr(c, name), o.allowed())
    _require(c.downlink_patience >= 0, "downlink_patience", c.downlink_patience, "an integer >= 0 (0 = no early stop)")
    _require(c.downlink_samples >= 0, "downlink_samples", c.downlink_samples,
             "an integer >= 0 (0 = the uplink's M)")
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
ADVERSARY_KINDS = ("nan", "huge", "scale", "collude", "garbage", "wrong-shape", "drop")
