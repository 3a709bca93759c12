"""Command line: ``e3sfc run | fetch | plot | compare | plot-partition``.

Errors in input (unknown names, impossible numbers, bad files) print one line
naming the flag, the value and what is allowed, and exit with status 2. A run that
started but cannot go on (every update of a round rejected) prints one line and exits 1.

Importing this module imports no torch: the flags of ``run`` and ``plot-partition`` come from
the run settings and the methods' declarations (which need torch) and are added when that
subcommand is parsed (:func:`main`), so ``e3sfc --help`` is quick.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from .errors import ConfigError, DataError, PayloadError, RunStopped

if TYPE_CHECKING:
    from .config import RunConfig

log = logging.getLogger("e3sfc")

# `e3sfc run --help`: the run settings in groups, in this order (the methods' knobs follow "compression",
# in groups of their own: method_groups)
GROUPS = {
    "what to run": ("protocol", "method", "dataset", "emnist_split", "model"),
    "data": ("clients", "fraction", "partition", "alpha", "holdout", "train_subset", "test_subset", "data_dir",
             "max_len", "min_freq", "vocab_size"),
    "local training": ("rounds", "weighted", "local_epochs", "batch_size", "lr", "lr_decay"),
    "compression": ("ratio", "ef", "batch_search"),
    "downlink and budget (E-3SFC)": ("downlink", "downlink_ratio", "downlink_samples", "downlink_patience", "init",
                                     "schedule", "budget_bytes", "target_cosine", "max_samples", "decay_rate"),
    "robustness": ("norm_clip", "aggregate", "adversary", "adversaries", "round_timeout"),
    "run control": ("engine", "seed", "device", "threads", "eval_every", "checkpoint_every", "state_memory",
                    "tensorboard", "out"),
}


def method_groups() -> dict[str, tuple[str, ...]]:
    """The methods' declared settings in help groups, one for each set of methods that take them
    (``options of 3sfc, e3sfc``), in the order of :func:`~e3sfc.config.method_settings`."""
    from .config import method_settings, takers

    groups: dict[str, tuple[str, ...]] = {}
    for name in method_settings():
        title = "options of " + ", ".join(takers(name))
        groups[title] = (*groups.get(title, ()), name)
    return groups


def _metavar(name: str) -> str | None:
    """``{a,b,c}`` for the settings with a fixed set of values."""
    from .config import choices
    c = choices().get(name)
    return "{" + ",".join(c) + "}" if c else None


def _version() -> str:
    from . import __version__
    return __version__


class _Parser(argparse.ArgumentParser):
    """One-line errors; ``fill``, where set, adds the parser's arguments the first time it parses or
    formats its help (a subcommand whose flags need torch: :func:`build_parser` with ``lazy``)."""

    fill: Callable[[argparse.ArgumentParser], None] | None = None

    def error(self, message: str) -> None:  # one line, status 2
        self.exit(2, f"e3sfc: error: {message}\n")

    def _filled(self) -> None:
        if self.fill is not None:
            fill, self.fill = self.fill, None
            fill(self)

    def parse_known_args(self, args=None, namespace=None):
        self._filled()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._filled()
        return super().format_help()

    def format_usage(self) -> str:
        self._filled()
        return super().format_usage()


def _run_arguments(run: argparse.ArgumentParser) -> None:
    """``e3sfc run``'s flags: one per RunConfig field, in the help groups, each with its description
    and default (:func:`~e3sfc.config.describe`, also RunConfig's docstring)."""
    from dataclasses import fields

    from .config import RunConfig, describe

    run.add_argument("--config", help="TOML file with settings (flags override it)")
    run.add_argument("--resume", metavar="RUN_DIR",
                     help="continue the run in RUN_DIR from its checkpoint; with --rounds N, extend a finished or "
                     "stopped run to N rounds (no other setting may change)")
    titles = list(GROUPS)
    titles[titles.index("compression") + 1:1] = method_groups()
    groups = {**GROUPS, **method_groups()}
    boxes = {title: run.add_argument_group(title) for title in titles}
    where = {name: title for title, names in groups.items() for name in names}
    for f in fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        box = boxes[where.get(f.name, "run control")]
        # flags default to None (config files layer): the help says the setting's default, once
        if str(f.type) in ("bool", "bool | None"):
            box.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                             help=describe(f.name))
        else:
            box.add_argument(flag, dest=f.name, default=None, help=describe(f.name), metavar=_metavar(f.name))


PARTITION_SETTINGS = ("dataset", "clients", "partition", "alpha", "seed", "data_dir", "emnist_split", "train_subset")


def _partition_arguments(part: argparse.ArgumentParser) -> None:
    from .config import describe

    part.add_argument("--out", required=True, help="image file (.png, .pdf, .svg)")
    for name in PARTITION_SETTINGS:
        part.add_argument("--" + name.replace("_", "-"), dest=name, default=None, help=describe(name))


def build_parser(lazy: bool = False) -> argparse.ArgumentParser:
    """The command line's parser. ``lazy``: the flags of ``run`` and ``plot-partition`` (they import torch)
    are added when that subcommand is parsed or its help shown, not now."""
    p = _Parser(prog="e3sfc", description="Communication-efficient FL by synthesizing features (3SFC / E-3SFC).")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    p.add_argument("--version", action="version", version=f"e3sfc {_version()}")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    run = sub.add_parser("run", help="run one federated training")
    fetch = sub.add_parser("fetch", help="find or download a dataset (SHA-256 checked) and report where it is")
    fetch.add_argument("dataset", help="mnist, fmnist, fmnist-rgb32, emnist, cifar10, cifar100, digits, agnews, imdb, "
                       "sogou")
    fetch.add_argument("--data-dir", default=None, help="folder to look in and download into")
    fetch.add_argument("--emnist-split", default="balanced")
    plot = sub.add_parser("plot", help="plot runs: a metric against rounds and against megabytes sent; "
                          "--frontier: final accuracy against total megabytes")
    plot.add_argument("runs", nargs="+", metavar="RUN_DIR")
    plot.add_argument("--frontier", action="store_true",
                      help="one point per run: final accuracy (mean of the last 10 rounds) against the total MB "
                      "sent both ways, log x; runs that differ only in their seed: their mean, ± 1 sd")
    plot.add_argument("--out", required=True, help="image file (.png, .pdf, .svg)")
    plot.add_argument("--metric", default="accuracy",
                      help="accuracy, loss, cosine (mean per-client compression cosine), downlink_cosine, "
                      "aggregate_cosine (mean decoded update against the mean true update), "
                      "aggregate_downlink_cosine (what the clients applied against the mean true update)")
    cmp_ = sub.add_parser("compare", help="compare runs in a table (runs that differ only in their seed: one "
                          "row, mean ± sd over the seeds)")
    cmp_.add_argument("runs", nargs="+", metavar="RUN_DIR")
    cmp_.add_argument("--target", default=None, help="accuracy target for rounds / megabytes to reach it")
    cmp_.add_argument("--markdown", default=None, metavar="FILE",
                      help="also write the table as markdown to FILE ('-': print markdown instead of the text table); "
                      "markdown has every column")
    cmp_.add_argument("--all", action="store_true",
                      help="every column in the text table (accuracy at 25/50/100%%, rounds to the target, MB in all); "
                      "without it: bytes each way, x less than dense, final accuracy, MB to the target, s / round")
    part = sub.add_parser("plot-partition", help="plot the label distribution of a partition")
    for parser, fill in ((run, _run_arguments), (part, _partition_arguments)):
        if lazy:
            parser.fill = fill
        else:
            fill(parser)
    return p


def cmd_plot(args: argparse.Namespace) -> int:
    from .report import METRICS, check_output, image_formats, load_run, plot_frontier, plot_runs

    check_output(args.out, "--out", image_formats())  # before any run is read
    if args.metric not in METRICS:
        raise ConfigError(f"--metric: {args.metric!r} is not allowed; expected one of {', '.join(METRICS)}")
    if args.frontier and args.metric != "accuracy":
        raise ConfigError(f"--metric: {args.metric!r} is not allowed with --frontier; expected accuracy (the "
                          "frontier plots final accuracy against total megabytes)")
    runs = [load_run(r) for r in args.runs]
    out = plot_frontier(runs, args.out) if args.frontier else plot_runs(runs, args.out, args.metric)
    print(f"wrote {out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .report import check_output, load_run, markdown_table, seed_groups, text_table, write_output

    target = None
    if args.target is not None:
        try:
            target = float(args.target)
        except ValueError:
            target = -1.0
        if not 0 < target <= 1:
            raise ConfigError(f"--target: {args.target!r} is not allowed; expected an accuracy in (0, 1]")
    to_stdout = args.markdown == "-"
    markdown = check_output(args.markdown, "--markdown") if args.markdown and not to_stdout else None
    rows = seed_groups([load_run(r) for r in args.runs], target)
    if markdown is not None:
        write_output(markdown, "--markdown", lambda f: f.write(markdown_table(rows, target) + "\n"))
    print(markdown_table(rows, target) if to_stdout else text_table(rows, target, short=not args.all))
    return 0


def cmd_plot_partition(args: argparse.Namespace) -> int:
    import numpy as np

    from .config import RunConfig
    from .data import load_dataset, partition
    from .report import check_output, image_formats, plot_partition

    check_output(args.out, "--out", image_formats())  # before the dataset is read
    cfg = RunConfig.from_sources(None, **{k: getattr(args, k) for k in PARTITION_SETTINGS})
    data = load_dataset(cfg.dataset, cfg.data_dir, emnist_split=cfg.emnist_split, train_subset=cfg.train_subset,
                        seed=cfg.seed)
    labels = data.train_y.numpy()
    parts = partition(labels, cfg.clients, cfg.partition, cfg.alpha, cfg.seed)
    counts = np.stack([np.bincount(labels[p], minlength=data.num_classes) for p in parts])
    what = f"Dirichlet alpha={cfg.alpha:g}" if cfg.partition == "dirichlet" else "IID"
    out = plot_partition(counts, args.out, f"{cfg.dataset}: {cfg.clients} clients, {what}, seed {cfg.seed}")
    print(f"wrote {out}")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from .config import RunConfig
    from .data import load_dataset, locate

    RunConfig.from_sources(None, dataset=args.dataset, emnist_split=args.emnist_split)  # names: one line, exit 2
    where = locate(args.dataset, args.data_dir, emnist_split=args.emnist_split)
    d = load_dataset(args.dataset, args.data_dir, emnist_split=args.emnist_split)
    print(f"{args.dataset}: {len(d.train_y):,} train / {len(d.test_y):,} test samples, "
          f"input {d.input_shape}, {d.num_classes} classes\n  files in {where}")
    return 0


def _check_threads(n: int) -> None:
    """A new run may not ask for more threads than this machine has CPUs (more would oversubscribe,
    and far more crashes torch)."""
    cpus = os.cpu_count() or 1
    if n > cpus:
        raise ConfigError(f"--threads: {n} is not allowed; expected an integer in 0..{cpus} (this machine's CPU "
                          "count; 0 = torch default)")


def _set_threads(n: int) -> None:
    """Pin torch's intra-op threads (0 = torch's default). A resumed run keeps its own count, capped at
    this machine's CPU count (then, with another count, its numbers may differ from an unbroken run)."""
    if n:
        import torch

        cpus = os.cpu_count() or 1
        if n > cpus:
            log.warning("--threads %d is more than this machine's %d CPUs; using %d (the run's numbers may then "
                        "differ from a run with %d threads)", n, cpus, cpus, n)
            n = cpus
        torch.set_num_threads(n)


def _default_out(cfg: RunConfig) -> str:
    return str(Path("runs") / f"{cfg.method}-{cfg.dataset}-{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}")


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1000
    return str(n)


def _progress(total: int, start: int, stream=None):
    """The run's progress: a tqdm bar on a terminal; elsewhere (piped, logged, nohup) one line per
    evaluated round on stderr: round, accuracy, MB so far (up + down), seconds a round, time left.
    Returns (the ``progress(t, row)`` callback, what to close at the end or None)."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover
            tqdm = None
        if tqdm is not None:
            bar = tqdm(total=total, initial=start, unit="round", leave=False, dynamic_ncols=True, file=stream)

            def update(t: int, row: dict) -> None:
                if row:
                    bar.set_postfix(acc=f"{row['accuracy']:.4f}", refresh=False)
                bar.update(1)

            return update, bar
    t0 = time.perf_counter()

    def line(t: int, row: dict) -> None:
        if not row:
            return
        per = (time.perf_counter() - t0) / max(t - start, 1)
        mb = ((row.get("cum_uplink_bytes") or 0) + (row.get("cum_downlink_bytes") or 0)) / 1e6
        print(f"round {t}/{total}: accuracy {row['accuracy']:.4f}, {mb:,.2f} MB so far, {per:.2f} s/round, "
              f"ETA {_duration(per * (total - t))}", file=stream, flush=True)

    return line, None


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def cmd_run(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from .config import RunConfig
    from .federated import Simulation

    overrides = {f.name: getattr(args, f.name) for f in fields(RunConfig)}
    if args.resume:
        given = [k for k, v in overrides.items() if v is not None and k != "rounds"]
        if given or args.config:
            what = given[0].replace("_", "-") if given else "config"
            raise ConfigError(f"--resume: takes no other settings but --rounds (got --{what}); the run's "
                              "config.json is used")
        rounds = None if args.rounds is None else RunConfig.from_sources(None, rounds=args.rounds).rounds
        _set_threads(Simulation.resume_config(args.resume).threads)  # before any data or model is built
        sim = Simulation.resume(args.resume, rounds=rounds)
        out = Path(args.resume)
    else:
        cfg = RunConfig.from_sources(args.config, **overrides)
        _check_threads(cfg.threads)
        _set_threads(cfg.threads)
        out = Path(cfg.out or _default_out(cfg))
        created = _check_out(out)  # the first folder this run created, if any
        cfg = cfg.replace(out=str(out))
        try:
            if cfg.engine == "flower":
                from .federated.loop import resolve_device
                return _run_flower(cfg.replace(device=resolve_device(cfg.device)), out)
            sim = Simulation(cfg, out_dir=out)
        except BaseException:
            if created is not None:
                _remove_created(out, created)  # leave nothing behind for a run that could not start
            raise
    update, bar = _progress(sim.cfg.rounds, sim.round)
    try:
        summary = sim.run(progress=update)
    finally:
        if bar is not None:
            bar.close()
    _print_summary({**summary, "device": sim.cfg.device, "device_asked": sim.device_asked}, out)
    return 0


def _check_out(out: Path) -> Path | None:
    """--out must be a folder we can create and write, and hold no checkpointed run; creates it. Returns
    the first folder on the way to it that did not exist (``out`` or a parent; a run refused before it
    starts removes them), or None."""
    from .federated.simulator import check_reusable

    try:
        created = not out.exists()
    except OSError as exc:  # a name too long for the file system, a loop of links, ...
        raise ConfigError(f"--out: cannot create a run folder at {str(out)[:80]!r}{'...' if len(str(out)) > 80 else ''}"
                          f" ({exc.strerror or exc}); expected a writable folder path (each name at most 255 "
                          "bytes)") from None
    if not created and not out.is_dir():
        raise ConfigError(f"--out: {str(out)!r} is a file; expected a folder for the run")
    check_reusable(out)
    first = None
    if created:
        first = out.absolute()
        while not first.parent.exists() and first.parent != first:
            first = first.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        if first is not None:
            _remove_created(out, first)
        raise ConfigError(f"--out: cannot create a run folder at {str(out)[:80]!r}{'...' if len(str(out)) > 80 else ''}"
                          f" ({exc.strerror or exc}); expected a writable folder path") from None
    return first


def _remove_created(out: Path, first: Path) -> None:
    """Remove ``out`` and its parents up to ``first``, the folders this run created, where empty (a refused
    run leaves nothing behind)."""
    here = out.absolute()
    while True:
        try:
            here.rmdir()
        except OSError:
            return
        if here == first or here.parent == here:
            return
        here = here.parent


def _ratio(dense: int, ours: int) -> str:
    return f"{dense / ours:,.1f}x" if ours else "inf x"


def _run_flower(cfg: RunConfig, out: Path) -> int:
    import json

    try:
        from .flower import run_flower_simulation
    except ImportError as exc:
        raise ConfigError(f"--engine: 'flower' needs Flower: {exc}") from None
    from .flower.apps import STOPPED_FILE
    (out / STOPPED_FILE).unlink(missing_ok=True)
    update, bar = _progress(cfg.rounds, 0)
    try:
        run_flower_simulation(cfg, out, progress=update)
    finally:
        if bar is not None:
            bar.close()
    if (out / STOPPED_FILE).is_file() and not (out / "summary.json").is_file():
        raise ConfigError((out / STOPPED_FILE).read_text().strip())
    if not (out / "summary.json").is_file():
        raise ConfigError(f"--engine flower: the Flower run did not finish; see the log above and {out}")
    _print_summary(json.loads((out / "summary.json").read_text()), out)
    return 0


def _print_summary(s: dict, out: Path) -> None:
    r = max(s["rounds"], 1)
    dense = s["dense_bytes_per_transfer"]
    total = s["total_uplink_bytes"] + s["total_downlink_bytes"]
    lines = [
        f"e3sfc run: {s['method']} on {s['dataset']} / {s['model']} ({s['num_params']:,} parameters)",
        f"  rounds            {s['rounds']}",
        f"  final accuracy    {s['final_accuracy']:.4f}   (best {s['best_accuracy']:.4f})",
        f"  uplink total      {_fmt_bytes(s['total_uplink_bytes'])}",
        f"  downlink total    {_fmt_bytes(s['total_downlink_bytes'])}",
        f"  dense model       {_fmt_bytes(dense)} per transfer",
        "  vs FedAvg         " + ("dense both ways (this is FedAvg)" if s["method"] == "fedavg" and
                                   s.get("downlink") in (None, "dense") else
                                   f"{_ratio(s['fedavg_uplink_bytes'], s['total_uplink_bytes'])} fewer bytes up, "
                                   f"{_ratio(s['fedavg_downlink_bytes'], s['total_downlink_bytes'])} down, "
                                   f"{_ratio(s['fedavg_uplink_bytes'] + s['fedavg_downlink_bytes'], total)} in all"),
        *[f"  {way + ' payload':<17} --payload-bytes picked R = {f['feature_res'] or 'the input size'}, "
          f"M = {f['samples']}, {f['feature_bits']}-bit ({f['bytes']:,} B)"
          for way, f in (s.get("payload_fit") or {}).items()],
        f"  wall time         {s['wall_seconds']:.1f} s ({s['wall_seconds'] / r:.3f} s/round)",
        *([f"  device            {s['device']}" + (f" (--device {s['device_asked']})"
                                                   if s.get("device_asked") not in (None, s["device"]) else "")]
          if s.get("device") else []),
        f"  run folder        {out}",
    ]
    print("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(lazy=True)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return 2
    from .federated.loop import Interrupted
    try:
        commands = {"run": cmd_run, "fetch": cmd_fetch, "plot": cmd_plot, "compare": cmd_compare,
                    "plot-partition": cmd_plot_partition}
        return commands[args.command](args)
    except (ConfigError, DataError, PayloadError) as exc:
        print(f"e3sfc: error: {exc}", file=sys.stderr)
        return 2
    except RunStopped as exc:  # valid settings, but the run cannot go on (see docs/safety.md)
        print(f"e3sfc: error: {exc}", file=sys.stderr)
        return 1
    except Interrupted as stop:
        print(f"e3sfc: {stop}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("e3sfc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
