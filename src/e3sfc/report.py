"""Reading run folders back: comparison tables and plots (``e3sfc compare | plot``)."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .errors import ConfigError, shorten
from .records import metrics_problem, read_rows

METRICS = ("accuracy", "loss", "cosine", "downlink_cosine", "aggregate_cosine", "aggregate_downlink_cosine")


@dataclass
class Run:
    path: Path
    config: dict
    rows: list[dict]
    summary: dict | None

    @property
    def label(self) -> str:
        return self.path.name

    def series(self, key: str) -> list[float | None]:
        return [r.get(key) for r in self.rows]


def _read_json(path: Path):
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path.name} is not UTF-8 text (byte {exc.start})") from None
    except ValueError as exc:
        raise ValueError(f"{path.name} is not JSON ({exc})") from None


def _config_problem(config) -> str | None:
    if not isinstance(config, dict):
        return f"config.json holds a JSON {type(config).__name__}, not an object"
    if not isinstance(config.get("method"), str):
        return f"config.json: method {config.get('method')!r} is not a name"
    for key, need in (("rounds", True), ("eval_every", False)):
        v = config.get(key)
        if (need or v is not None) and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            return f"config.json: {key} {v!r} is not an integer >= 1"
    return None


def _summary_problem(summary) -> str | None:
    if not isinstance(summary, dict):
        return f"summary.json holds a JSON {type(summary).__name__}, not an object"
    v = summary.get("dense_bytes_per_transfer")
    if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
        return f"summary.json: dense_bytes_per_transfer {v!r} is not a positive integer"
    return None


def load_run(path: str | Path) -> Run:
    """A run folder, checked before anything is drawn or counted from it: config.json a run's config,
    every row of metrics.jsonl a row a run writes (see :func:`~e3sfc.records.metrics_problem`), within
    its rounds, and summary.json, where there is one, a JSON object. A ConfigError names the folder, the
    file and what is wrong."""
    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"run folder {str(p)!r} does not exist")
    if not (p / "config.json").is_file() or not (p / "metrics.jsonl").is_file():
        raise ConfigError(f"{str(p)!r} is not a run folder (needs config.json and metrics.jsonl)")
    try:
        config = _read_json(p / "config.json")
        why = _config_problem(config)
        if why:
            raise ValueError(why)
        rows = read_rows(p / "metrics.jsonl", metrics_problem)
        if rows and rows[-1]["round"] > config["rounds"]:
            raise ValueError(f"metrics.jsonl holds round {rows[-1]['round']} of a run of {config['rounds']} rounds")
        summary = None
        if (p / "summary.json").is_file():
            summary = _read_json(p / "summary.json")
            why = _summary_problem(summary)
            if why:
                raise ValueError(why)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"run folder {str(p)!r} is damaged: {str(exc).replace(str(p) + '/', '')}; expected "
                          "the files e3sfc run writes") from None
    if not rows:
        raise ConfigError(f"run folder {str(p)!r} has no evaluated rounds yet")
    return Run(p, config, rows, summary)


def image_formats() -> list[str]:
    """The file formats matplotlib can write here (png, pdf, svg, ...)."""
    _pyplot()
    from matplotlib.figure import Figure
    return sorted(Figure().canvas.get_supported_filetypes())


# the longest name of one file or folder that output may have: 255 bytes on common file systems, less the
# room atomic_write's temporary name (".NAME.xxxxxxxx.tmp") takes beside it
NAME_MAX = 240


def check_output(out: str | Path, flag: str, formats: Sequence[str] | None = None) -> Path:
    """An output file the command may write, checked before any work: not a folder, in one of
    ``formats`` (by its suffix; none: png) where given, in a folder that exists or can be made and is
    writable. A ConfigError names ``flag`` otherwise."""
    p = Path(out)
    # the file's own name leaves room for atomic_write's temporary name beside it; a folder's may be 255 bytes
    for part, limit, what in [(f, 255, "folder names") for f in p.parent.parts] + [(p.name, NAME_MAX, "a file name")]:
        if len(os.fsencode(part)) > limit:
            raise ConfigError(f"{flag}: the name {shorten(part, 60)!r} is {len(os.fsencode(part))} bytes long; "
                              f"expected {what} of at most {limit} bytes")
    try:
        if p.is_dir():
            raise ConfigError(f"{flag}: {str(p)!r} is a folder; expected a file path")
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot use {shorten(str(p), 60)!r} ({exc.strerror or exc}); expected a file path "
                          "in a writable folder") from None
    if formats is not None:
        fmt = p.suffix.lstrip(".").lower() or "png"
        if fmt not in formats:
            raise ConfigError(f"{flag}: format {fmt!r} of {str(p)!r} is not allowed; expected a file ending in one "
                              f"of .{', .'.join(formats)}")
    folder = p.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag}: cannot write {str(p)!r} ({str(folder)!r} is not a writable folder); "
                          "expected a path in a writable folder")
    return p


def write_output(out: Path, flag: str, write, mode: str = "w") -> None:
    """Write ``out`` atomically (whole or not at all); an OSError becomes a ConfigError naming ``flag``."""
    from .io import atomic_write
    try:
        atomic_write(out, write, mode=mode)
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot write {str(out)!r} ({exc.strerror or exc}); expected a path in a "
                          "writable folder") from None


def _acc_at(run: Run, frac: float) -> float | None:
    target_round = max(1, math.ceil(frac * run.config["rounds"]))
    best = [r for r in run.rows if r["round"] <= target_round]
    return best[-1]["accuracy"] if best else None


def _acc_tail(run: Run, frac: float = 0.1) -> float | None:
    """Mean test accuracy over the evaluated rounds in the last ``frac`` of the run's rounds: with M = 1
    the synthesis methods move by several points from one round to the next, so the final round alone
    says little."""
    first = run.config["rounds"] - max(1, math.ceil(frac * run.config["rounds"]))
    tail = [r["accuracy"] for r in run.rows if r["round"] > first]
    return sum(tail) / len(tail) if tail else None


def compare_rows(runs: Sequence[Run], target: float | None = None) -> list[dict]:
    out = []
    for run in runs:
        rows = run.rows
        last = rows[-1]
        # per client-round, each direction over the rounds in which it sent something (round 1 sends
        # nothing down when w_1 is built from the seed); needs every round's row (--eval-every 1)
        every = run.config.get("eval_every", 1) == 1
        up_parts = sum(r.get("participants") or 0 for r in rows if r.get("uplink_bytes", 1)) or 1
        down_parts = sum(r.get("participants") or 0 for r in rows if r.get("downlink_bytes", 1)) or 1
        up = last["cum_uplink_bytes"] / up_parts if every else None
        down = last["cum_downlink_bytes"] / down_parts if every else None
        dense = run.summary.get("dense_bytes_per_transfer") if run.summary else None
        reach = next((r for r in rows if r["accuracy"] >= target), None) if target is not None else None
        out.append({
            "run": run.label,
            "method": run.config["method"],
            "up_bytes_per_client_round": up,
            "down_bytes_per_client_round": down,
            "ratio_vs_dense": (2 * dense / (up + down)) if dense and up is not None and (up + down) else None,
            "acc_25": _acc_at(run, 0.25), "acc_50": _acc_at(run, 0.5), "acc_100": _acc_at(run, 1.0),
            "acc_last10": _acc_tail(run),
            "rounds_to_target": reach["round"] if reach else None,
            "mb_to_target": (reach["cum_uplink_bytes"] + reach["cum_downlink_bytes"]) / 1e6 if reach else None,
            "total_mb": (last["cum_uplink_bytes"] + last["cum_downlink_bytes"]) / 1e6,
            "seconds_per_round": last["seconds"] / last["round"],
            "device": run.config.get("device", "cpu"),
        })
    return out


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


# compare's columns: (key, header, format)
COLUMNS = (("up_bytes_per_client_round", "up B / client-round", ",.0f"),
           ("down_bytes_per_client_round", "down B / client-round", ",.0f"),
           ("ratio_vs_dense", "x less than dense", ",.1f"), ("total_mb", "MB in all", ",.2f"),
           ("acc_25", "acc @25%", ".4f"), ("acc_50", "acc @50%", ".4f"), ("acc_100", "acc @100%", ".4f"),
           ("acc_last10", "mean acc, last 10%", ".4f"), ("rounds_to_target", "rounds to {t}", ".0f"),
           ("mb_to_target", "MB to {t}", ",.2f"), ("seconds_per_round", "s / round", ".2f"))


def seed_groups(runs: Sequence[Run], target: float | None = None) -> list[dict]:
    """compare's rows: one per run, or one per group of runs that differ only in their seed, its numbers
    the means over the group and ``spread`` their sample standard deviations (``n`` runs; a number some
    runs lack, as rounds to a target some never reach, is the mean of those that have it, and
    ``counts`` says of how many)."""
    rows = compare_rows(runs, target)
    by_run = {id(run): row for run, row in zip(runs, rows)}
    out = []
    for label, group in _series(runs):
        if len(group) == 1:
            out.append({**by_run[id(group[0])], "n": 1, "spread": {}, "counts": {}})
            continue
        members = [by_run[id(run)] for run in group]
        row = {"run": label, "method": members[0]["method"], "n": len(group), "spread": {}, "counts": {},
               "device": members[0]["device"]}
        for key, _, _ in COLUMNS:
            vals = [m[key] for m in members if m[key] is not None]
            row[key] = sum(vals) / len(vals) if vals else None
            if len(vals) > 1:
                mean = row[key]
                row["spread"][key] = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
            if len(vals) != len(members):
                row["counts"][key] = len(vals)
        out.append(row)
    return out


# compare's terminal table unless --all: bytes each way, how many times fewer than dense, final accuracy, the
# cost to the target when one is given, and time
SHORT = ("up_bytes_per_client_round", "down_bytes_per_client_round", "ratio_vs_dense", "acc_last10", "mb_to_target",
         "seconds_per_round")


def _columns(target: float | None, short: bool) -> tuple:
    return tuple(c for c in COLUMNS if not short or (c[0] in SHORT and (target is not None or c[0] != "mb_to_target")))


def _cells(rows: list[dict], target: float | None, short: bool = False) -> tuple[list[str], list[list[str]]]:
    t = f"{target:g}" if target is not None else "target"
    columns = _columns(target, short)
    head = ["run", "method", *(h.format(t=t) for _, h, _ in columns)]
    body = []
    for r in rows:
        cells = [str(r["run"]), str(r["method"])]
        for key, _, spec in columns:
            v = r.get(key)
            cell = _fmt(v, spec)
            if v is not None and key in r.get("spread", {}):
                cell += " ± " + format(r["spread"][key], spec)
            if key in r.get("counts", {}):
                cell += f" ({r['counts'][key]} of {r['n']})"
            cells.append(cell)
        body.append(cells)
    return head, body


def markdown_table(rows: list[dict], target: float | None = None) -> str:
    """compare's table in markdown (``rows``: compare_rows' or seed_groups')."""
    head, body = _cells(rows, target)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def text_table(rows: list[dict], target: float | None = None, short: bool = False) -> str:
    """compare's table for a terminal: columns aligned (names left, numbers right), a rule under the
    header; a group of seeds reads ``mean ± sd``. ``short``: only the SHORT columns."""
    head, body = _cells(rows, target, short)
    width = [max(len(c[i]) for c in (head, *body)) for i in range(len(head))]

    def line(cells):
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, width))).rstrip()

    return "\n".join([line(head), "  ".join("-" * w for w in width), *map(line, body)])


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("plotting needs matplotlib: pip install 'matplotlib>=3.5'") from None
    return plt


_NOT_THE_SETTING = ("seed", "out", "threads", "checkpoint_every", "device", "eval_every", "data_dir")


def _series(runs: Sequence[Run]) -> list[tuple[str, list[Run]]]:
    """Runs that differ only in their seed, as one series (label: the run name without its seed)."""
    import re
    groups: dict[str, list[Run]] = {}
    labels: dict[str, str] = {}
    for run in runs:
        key = json.dumps({k: v for k, v in run.config.items() if k not in _NOT_THE_SETTING}, sort_keys=True)
        groups.setdefault(key, []).append(run)
        labels.setdefault(key, re.sub(r"-seed\d+", "", run.label))
    return [(labels[k] + (f" ({len(v)} seeds)" if len(v) > 1 else ""), v) for k, v in groups.items()]


def _title(runs: Sequence[Run]) -> str:
    """What the runs share: dataset, model, Dirichlet alpha (or the alphas), rounds."""
    def one(key: str, fmt: str) -> str | None:
        vals = sorted({str(r.config.get(key)) for r in runs})
        return fmt.format(", ".join(vals)) if vals and vals != ["None"] else None
    parts = [one("dataset", "{}"), one("model", "{}"), one("alpha", "Dirichlet alpha {}"), one("rounds", "{} rounds")]
    return " / ".join(p for p in parts if p)


# One colour per method name, the same in every figure and for every metric (tab10's colours, FedAvg
# black): a reader learns them once. A method not named here gets one of the spare colours, picked by
# its name, so it too keeps its colour from one figure to the next.
METHOD_COLORS = {
    "fedavg": "#000000", "3sfc": "#ff7f0e", "e3sfc": "#1f77b4", "topk": "#2ca02c", "stc": "#d62728",
    "sign": "#9467bd", "qsgd": "#8c564b", "fedsynth": "#e377c2", "powersgd": "#bcbd22",
}
_SPARE_COLORS = ("#17becf", "#7f7f7f", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173")
# the variants of a method (runs of it with other settings): shades of its colour, each with a marker
# and a line style of its own, so two variants never differ by their dashes alone
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
# seven styles against six shades: a variant and the one six later differ in their dashes as well
_STYLES = ("-", "--", ":", "-.", (0, (8, 2)), (0, (3, 1, 1, 1, 1, 1)), (0, (12, 3, 3, 3)))  # one dotted style
# how far a variant's shade moves toward black (odd variants) or white (even ones), first to third of
# each side; spaced so that no two are alike, the darkest still shows its hue and the lightest shows on white
_DARKER = (0.3, 0.45, 0.6)
_LIGHTER = (0.3, 0.5, 0.68)


def method_color(method: str) -> str:
    """The colour of ``method`` in every figure: :data:`METHOD_COLORS`, else a spare colour picked by a
    stable hash of the name (not Python's salted ``hash``)."""
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    import zlib
    return _SPARE_COLORS[zlib.crc32(method.encode()) % len(_SPARE_COLORS)]


def shade(color: str, n: int) -> tuple[float, float, float]:
    """Variant ``n`` of a method's colour: 0 is the colour itself; then alternately darker and lighter,
    further from it as ``n`` grows, six distinct shades before they repeat (black, FedAvg's, only
    lightens: three shades)."""
    from matplotlib.colors import to_rgb
    rgb = to_rgb(color)
    if n == 0:
        return rgb
    if sum(rgb) <= 0.3:
        return tuple(c + (1 - c) * _LIGHTER[(n - 1) % len(_LIGHTER)] for c in rgb)
    k = (n - 1) // 2 % len(_DARKER)
    if n % 2 == 1:
        return tuple(c * (1 - _DARKER[k]) for c in rgb)
    return tuple(c + (1 - c) * _LIGHTER[k] for c in rgb)


def series_looks(series: Sequence[tuple[str, list[Run]]]) -> dict[str, dict]:
    """A look (colour, marker, line style) for each series of :func:`_series`, by its label: the colour
    is the method's (:func:`method_color`) whatever else is in the figure; the method's series named
    after it (else its first) has it plain with a round marker, its other series (variants: other
    settings, other schedules) a shade of it, their own marker and their own line style."""
    looks: dict[str, dict] = {}
    seen: dict[str, int] = {}
    # the series named after its method (e.g. run folder "e3sfc") takes the plain colour wherever it sits
    plain = sorted(series, key=lambda s: s[0].split(" (")[0] != str(s[1][0].config.get("method", "?")))
    for label, group in plain:
        if label in looks:  # the same series in another row of panels
            continue
        method = str(group[0].config.get("method", "?"))
        n = seen[method] = seen.get(method, -1) + 1
        looks[label] = {"color": shade(method_color(method), n), "marker": _MARKERS[n % len(_MARKERS)],
                        "linestyle": _STYLES[n % len(_STYLES)]}
    return looks


def _log_axis(ax) -> None:
    """A log x axis with labels that never overlap: plain numbers at 1, 2, 5 of each decade, no labels
    on the minor ticks (matplotlib labels those when the data span less than a decade)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    wide = hi > 0 and lo > 0 and hi / lo > 300  # more than 2.5 decades: 1, 2, 5 labels would touch
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0,) if wide else (1.0, 2.0, 5.0), numticks=8))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.4g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _legend_note(ax, label: str, look: dict, why: str):
    """A legend entry for a series that has nothing to draw, saying why, instead of dropping it."""
    (h,) = ax.plot([], [], label=f"{label}: {why}", color=look["color"], marker=look["marker"],
                   linestyle="none", markerfacecolor="none")
    return h


def _save(fig, out: str | Path, plt) -> Path:
    out = check_output(out, "--out", image_formats())
    try:
        write_output(out, "--out", lambda f: fig.savefig(f, format=out.suffix.lstrip(".").lower() or "png", dpi=120,
                                                         bbox_inches="tight"), mode="wb")
    finally:
        plt.close(fig)
    return out


def plot_runs(runs: Sequence[Run], out: str | Path, metric: str = "accuracy",
              panel: Callable[[Run], str | tuple[str, ...]] | None = None) -> Path:
    """Three panels: ``metric`` against rounds, against cumulative uplink MB, and against up+down MB.
    Each method in its own colour, the same in every figure (:func:`series_looks`); its variants in
    shades of it with markers of their own. Runs that differ only in their seed are drawn as their
    mean with a band from the lowest to the highest seed. The title says what the runs share; the
    legend sits outside the data. A series with no value of ``metric`` (FedAvg's cosines: it sends the
    update itself, 1 by definition) keeps its legend entry, which says so. ``panel(run)`` splits the
    runs into rows of such panels (e.g. by Dirichlet alpha; a tuple of names puts the run in each, e.g.
    a baseline beside every row), each row with its own title and legend, a series keeping its look in
    every row."""
    if metric not in METRICS:
        raise ConfigError(f"--metric: {metric!r} is not allowed; expected one of {', '.join(METRICS)}")
    rows: dict[str, list[Run]] = {}
    for run in runs:
        keys = panel(run) if panel else ""
        for key in keys if isinstance(keys, tuple) else (keys,):
            rows.setdefault(key, []).append(run)
    names = sorted(rows)
    plt = _pyplot()
    fig, axes = plt.subplots(len(names), 3, figsize=(16, 4.8 * len(names)), squeeze=False)
    strip = _panel_free if panel else (lambda label: label)
    looks = series_looks([(strip(label), group) for label, group in _series(runs)])
    for name, row in zip(names, axes):
        _plot_row(row, rows[name], metric, looks, strip)
        if panel:
            row[0].set_title(f"{name}: {_title(rows[name])}", loc="left", fontsize=10)
    fig.suptitle(_title(runs))
    fig.tight_layout()
    for row in axes:
        handles, labels = row[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="center left", fontsize=8, ncol=max(1, (len(labels) + 19) // 20),
                   **({"bbox_to_anchor": (1.02, 0.5), "bbox_transform": row[2].transAxes} if panel else
                      {"bbox_to_anchor": (1.0, 0.5)}))
    return _save(fig, out, plt)


def _panel_free(label: str) -> str:
    """A series' label without the Dirichlet alpha in its run name (the row's title says it), so that a
    variant has one label and one look in every row."""
    import re
    return re.sub(r"-alpha[0-9.]+", "", label)


def _plot_row(axes, runs: Sequence[Run], metric: str, looks: dict[str, dict], strip=lambda label: label) -> None:
    """One row of :func:`plot_runs`: ``metric`` against rounds, uplink MB and up+down MB."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    drawn: dict[bytes, str] = {}  # a curve already drawn (by round) -> its label: a series on top of it says so
    for label, group in ((strip(label), group) for label, group in _series(runs)):
        look = {**looks[label], "markevery": 0.1, "markersize": 4}
        if "cosine" in metric and group[0].config.get("method") == "fedavg":
            _legend_note(axes[0], label, look, f"not drawn ({metric} is 1 by definition: it sends the update itself)")
            continue
        rows = [{r["round"]: r for r in run.rows if r.get(metric) is not None} for run in group]
        common = sorted(set.intersection(*(set(r) for r in rows))) if rows else []
        if not common:
            _legend_note(axes[0], label, look, f"no {metric} recorded")
            continue
        vals = np.array([[r[t][metric] for t in common] for r in rows], dtype=float)
        up = np.mean([[r[t]["cum_uplink_bytes"] / 1e6 for t in common] for r in rows], axis=0)
        both = np.mean([[(r[t]["cum_uplink_bytes"] + r[t]["cum_downlink_bytes"]) / 1e6 for t in common]
                        for r in rows], axis=0)
        key = np.stack([np.array(common, dtype=float), vals.mean(0)]).tobytes()
        shown = f"{label} (the same {metric} each round as {drawn[key]})" if key in drawn else label
        drawn.setdefault(key, re.sub(r" \(\d+ seeds\)$", "", label))
        for ax, xs in zip(axes, (np.array(common), up, both)):
            ax.plot(xs, vals.mean(0), label=shown, **look)
            if len(group) > 1:
                ax.fill_between(xs, vals.min(0), vals.max(0), color=look["color"], alpha=0.15, linewidth=0)
    for ax, xl in zip(axes, ("round", "cumulative uplink MB (log)", "cumulative uplink + downlink MB (log)")):
        ax.set_xlabel(xl)
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    _log_axis(axes[1])
    _log_axis(axes[2])


FRONTIER_ROUNDS = 10


def final_accuracy(run: Run, last: int = FRONTIER_ROUNDS) -> float:
    """Final accuracy: the mean over the evaluated rounds among the run's last ``last`` rounds."""
    end = run.rows[-1]["round"]
    tail = [r["accuracy"] for r in run.rows if r["round"] > end - last]
    return sum(tail) / len(tail)


def frontier_points(runs: Sequence[Run]) -> list[dict]:
    """One point per series (:func:`_series`: runs that differ only in their seed make one): ``mb``
    the total megabytes sent (uplink + downlink) and ``acc`` the final accuracy (:func:`final_accuracy`),
    each the mean over the seeds, with ``mb_sd`` and ``acc_sd`` their sample standard deviations (0
    for one run) and ``seeds`` each run's own (mb, acc)."""
    out = []
    for label, group in _series(runs):
        pts = [((run.rows[-1]["cum_uplink_bytes"] + run.rows[-1]["cum_downlink_bytes"]) / 1e6, final_accuracy(run))
               for run in group]
        n = len(pts)

        def mean_sd(i):
            m = sum(p[i] for p in pts) / n
            return m, (math.sqrt(sum((p[i] - m) ** 2 for p in pts) / (n - 1)) if n > 1 else 0.0)

        (mb, mb_sd), (acc, acc_sd) = mean_sd(0), mean_sd(1)
        out.append({"label": label, "method": group[0].config.get("method"), "n": n, "mb": mb, "mb_sd": mb_sd,
                    "acc": acc, "acc_sd": acc_sd, "seeds": pts})
    return out


def plot_frontier(runs: Sequence[Run], out: str | Path, curve: Callable[[Run], str] | None = None,
                  panel: Callable[[Run], str] | None = None) -> Path:
    """Final accuracy (mean of the last 10 rounds) against the total megabytes sent, both ways, on a log
    axis: one point per run, or per group of runs that differ only in their seed (their mean, error
    bars of one sample standard deviation each way, each seed a small faint dot). Colours and markers
    as in :func:`plot_runs`. ``curve(run)``, where given, names the line a run's point belongs to (the
    same method at several budgets: one curve, its points joined in order of bytes, one label);
    ``panel(run)`` splits the runs into side-by-side panels (e.g. by Dirichlet alpha)."""
    plt = _pyplot()
    panels: dict[str, list[Run]] = {}
    for run in runs:
        panels.setdefault(panel(run) if panel else "", []).append(run)
    names = sorted(panels)
    fig, axes = plt.subplots(1, len(names), figsize=(7.5 if len(names) == 1 else 6.2 * len(names), 5),
                             sharey=True, squeeze=False)
    for ax, name in zip(axes[0], names):
        _frontier_panel(ax, panels[name], curve)
        if panel:  # each panel its own legend (a point's label carries its value in that panel)
            ax.set_title(name, fontsize=10)
            ax.legend(loc="lower right", fontsize=7)
        else:
            ax.set_title(_title(runs), fontsize=10)
            ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    axes[0][0].set_ylabel(f"final accuracy (mean of the last {FRONTIER_ROUNDS} rounds)")
    if panel:
        fig.suptitle(_title(runs), fontsize=10)
    fig.tight_layout()
    return _save(fig, out, plt)


def _frontier_panel(ax, runs: Sequence[Run], curve: Callable[[Run], str] | None) -> None:
    points = frontier_points(runs)
    if curve is None:
        looks = series_looks(_series(runs))
        lines = {p["label"]: [p] for p in points}
    else:
        by_label = {label: group[0] for label, group in _series(runs)}
        lines: dict[str, list[dict]] = {}
        for p in points:
            lines.setdefault(curve(by_label[p["label"]]), []).append(p)
        firsts = [(name, [by_label[ps[0]["label"]]]) for name, ps in lines.items()]
        looks = series_looks(firsts)
    for name, ps in lines.items():
        ps = sorted(ps, key=lambda p: p["mb"])
        look = looks[name]
        n = max(p["n"] for p in ps)
        if len(ps) == 1:
            p = ps[0]
            label = name + (f": {p['acc']:.3f} ± {p['acc_sd']:.3f}" if p["n"] > 1 else f": {p['acc']:.3f}")
        else:
            label = name + (f" ({n} seeds)" if n > 1 and "seeds)" not in name else "")
        ax.errorbar([p["mb"] for p in ps], [p["acc"] for p in ps],
                    xerr=[p["mb_sd"] for p in ps] if n > 1 else None,
                    yerr=[p["acc_sd"] for p in ps] if n > 1 else None, color=look["color"], marker=look["marker"],
                    markersize=7, linestyle=look["linestyle"] if len(ps) > 1 else "none", capsize=3, label=label)
        for p in ps:
            if p["n"] > 1:
                ax.scatter([s[0] for s in p["seeds"]], [s[1] for s in p["seeds"]], color=look["color"],
                           marker=look["marker"], s=12, alpha=0.35, linewidths=0)
    _log_axis(ax)
    lo, hi = ax.get_xlim()
    ax.set_xlim(lo / 1.5, hi * 1.5)
    ax.set_xlabel("total MB sent, uplink + downlink (log)")
    ax.grid(True, which="both", alpha=0.3)


def plot_partition(counts, out: str | Path, title: str) -> Path:
    """Samples of each class held by each client; ``counts`` is (K, C). Up to 50 clients: stacked bars;
    more: a heat map of class shares (clients sorted by size on the x axis), so the figure keeps a
    readable width whatever K is."""
    import numpy as np

    plt = _pyplot()
    counts = np.asarray(counts)
    k, c = counts.shape
    if k <= 50:
        fig, ax = plt.subplots(figsize=(max(6, 0.5 * k + 2), 4.5))
        bottom = np.zeros(k)
        cmap = plt.get_cmap("tab20" if c > 10 else "tab10")
        for j in range(c):
            ax.bar(range(k), counts[:, j], bottom=bottom, color=cmap(j % cmap.N), label=str(j) if c <= 20 else None)
            bottom += counts[:, j]
        ax.set_xlabel("client")
        ax.set_ylabel("samples")
        if c <= 20:
            ax.legend(title="class", fontsize=7, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    else:
        order = np.argsort(-counts.sum(1), kind="stable")
        share = counts[order] / np.maximum(counts[order].sum(1, keepdims=True), 1)
        fig, (top, ax) = plt.subplots(2, 1, figsize=(12, 6), sharex=True, height_ratios=(1, 3))
        top.bar(range(k), counts[order].sum(1), width=1.0, color="0.4")
        top.set_ylabel("samples")
        im = ax.imshow(share.T, aspect="auto", interpolation="nearest", cmap="viridis", vmin=0, vmax=1)
        ax.set_xlabel(f"client ({k}, largest first)")
        ax.set_ylabel("class")
        fig.colorbar(im, ax=[top, ax], label="share of the client's samples")
        top.set_title(title)
    if k <= 50:
        ax.set_title(title)
    if k <= 50:
        fig.tight_layout()
    out = check_output(out, "--out", image_formats())
    try:
        write_output(out, "--out", lambda f: fig.savefig(f, format=out.suffix.lstrip(".").lower() or "png", dpi=120),
                     mode="wb")
    finally:
        plt.close(fig)
    return out
