"""The reproduction suite: every method in the reference setting, the ConvNet, a non-IID sweep.

    python experiments/suite.py [--groups reference,noniid,seeds,convnet] [--jobs 2] [--root experiments/runs]

Runs go to ROOT/GROUP/NAME. A finished run (summary.json) is skipped; an
interrupted one resumes from its checkpoint, so the suite can be stopped and
started again. Each run uses one torch thread; ``--jobs`` runs that many at a
time. docs/results.md gets a table per group and docs/GROUP.png its plot from
whatever runs are finished (``--report-only`` rewrites the document from the
runs on disk without running anything, only the sections of ``--groups`` when
given; a report whose only change would be its date leaves the file as it is). --help lists the groups and their runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_GROUPS = "reference,noniid,seeds,convnet"
DEFAULT_ROOT = "experiments/runs"  # committed, so that --report-only rebuilds docs/results.md on a fresh clone
sys.path.insert(0, str(REPO / "src"))

from e3sfc.errors import ConfigError  # noqa: E402
from e3sfc.report import (  # noqa: E402
    _series as series_of,
    compare_rows, final_accuracy, load_run, markdown_table, plot_frontier, plot_runs,
)

BUDGET = 12_860_000  # 2x what E-3SFC at M = 1 sends in 100 rounds (20 payloads of 3,215 B a round)
MATCHED = ("topk-match", "stc-match")
SEEDS = (43, 44, 45)  # early stop against the full L-BFGS search; seed 42 is the reference group's
PAIRS = (("3sfc", "3sfc-reference-lbfgs"), ("e3sfc", "e3sfc-reference-lbfgs"))
SERIAL = (("3sfc", "3sfc-serial"), ("e3sfc", "e3sfc-serial"))  # the default batched search against --no-batch-search
ALPHAS = ("0.1", "0.5", "1.0")  # the non-IID sweep
COMMAND = "python experiments/suite.py --jobs 2"


TEXT_SETS = ("agnews", "imdb", "sogou")


def text_files_present() -> list[str]:
    """The text datasets whose published files this machine has (--data-dir-less lookup: $E3SFC_DATA,
    the user cache)."""
    from e3sfc.data.text import TEXT_SOURCES, _find
    present = []
    for ds in TEXT_SETS:
        try:
            _find(TEXT_SOURCES[ds][0], None, fetch=False)
            present.append(ds)
        except Exception:
            pass
    return present


def reference_runs(base: str) -> dict[str, list[str]]:
    runs = {
        "fedavg": ["--method", "fedavg"],
        "3sfc": ["--method", "3sfc", "--samples", "1", "--steps", "10"],
        "3sfc-reference-lbfgs": ["--method", "3sfc", "--samples", "1", "--steps", "10", "--patience", "0"],
        "e3sfc": ["--method", "e3sfc", "--samples", "1", "--steps", "10"],
        "topk-match": ["--method", "topk", "--ratio", "match:3sfc"],
        "stc-match": ["--method", "stc", "--ratio", "match:3sfc"],
        "sign": ["--method", "sign"],
        "topk-1pct": ["--method", "topk", "--ratio", "0.01"],
        "stc-1pct": ["--method", "stc", "--ratio", "0.01"],
        "qsgd-16": ["--method", "qsgd", "--levels", "16"],
        "fedsynth": ["--method", "fedsynth", "--samples", "1"],
    }
    for s in ("constant", "decay", "adaptive"):
        runs[f"e3sfc-budget-{s}"] = ["--method", "e3sfc", "--schedule", s, "--budget-bytes", str(BUDGET),
                                     "--target-cosine", "0.3"]
    return {k: ["--config", base, *v] for k, v in runs.items()}


def best_baseline(ref_dir: Path) -> str:
    """The matched-bytes baseline with the best final accuracy in the reference group (stc until known)."""
    scores = {}
    for name in MATCHED:
        try:
            scores[name] = load_run(ref_dir / name).rows[-1]["accuracy"]
        except Exception:
            pass
    return max(scores, key=scores.get) if len(scores) == len(MATCHED) else "stc-match"


# The frontier (issue 30): each method's best setting from the rate-distortion map (benchmarks/RESULTS.md,
# chosen on seed 42, then fixed), compressed both ways at three budgets a payload. Synthesis: 8-bit features,
# M = 1, 4, 15 (833, 3,215 and 11,949 B); Top-k (Golomb positions, 8-bit values) and STC (Golomb positions)
# take as many bytes as that synthesis payload at most (bytes:N); PowerSGD's rank is discrete: rank 1 (3,281 B)
# and rank 6 (11,251 B) at 8 bits; it has no setting near 1 KB on the MLP (its float32 bias vectors alone
# are 1,640 B), so it has no point there.
FRONTIER_BUDGETS = (("1k", 1, 833, None), ("3k", 4, 3215, 1), ("12k", 15, 11949, 6))  # (name, M, bytes, rank)
# synthesis at a lower feature resolution (--feature-res R, 8-bit): the best (R, M) within each budget by the
# same map, extended to R (benchmarks/RESULTS.md, "Synthesis at lower feature resolution"); 4-bit features
# at twice the samples captured at most 0.013 more, for twice the search, so 8-bit is kept
FRONTIER_RES = {"1k": (10, 7), "3k": (14, 15), "12k": (20, 29)}  # budget -> (R, M)
FRONTIER_ALPHAS = ("0.1", "1.0")


def coded_sparsifier(method: str, size: int) -> list[str]:
    """Top-k (8-bit values) or STC as the frontier runs them: Golomb-coded positions, K the largest whose payload
    fits in ``size`` bytes."""
    return [method, "--index-coding", "golomb", *(["--value-bits", "8"] if method == "topk" else []),
            "--ratio", f"bytes:{size}"]


def frontier_runs() -> dict[str, list[str]]:
    base = ["--config", "configs/reference.toml", "--init", "seed"]
    runs: dict[str, list[str]] = {}
    for s in (42, 43):  # seed 42 first: the whole picture at one seed before the second
        for a in FRONTIER_ALPHAS:
            tail = ["--alpha", a, "--seed", str(s)]
            runs[f"fedavg-alpha{a}-seed{s}"] = [*base, "--method", "fedavg", *tail]
            runs[f"e3sfc-3k-alpha{a}-seed{s}"] = [*base, "--method", "e3sfc", "--samples", "1", "--steps", "10", *tail]
            for b, m, size, rank in FRONTIER_BUDGETS:
                synth = ["--samples", str(m), "--feature-bits", "8"]
                runs[f"e3sfc-plus-{b}-alpha{a}-seed{s}"] = [*base, "--method", "e3sfc", *synth, "--steps", "10",
                                                            *tail]
                r, mr = FRONTIER_RES[b]
                runs[f"e3sfc-res-{b}-alpha{a}-seed{s}"] = [*base, "--method", "e3sfc", "--samples", str(mr),
                                                           "--feature-bits", "8", "--feature-res", str(r),
                                                           "--steps", "10", *tail]
                for meth in ("topk", "stc"):
                    runs[f"{meth}-golomb-{b}-alpha{a}-seed{s}"] = [*base, "--method", *coded_sparsifier(meth, size),
                                                                   "--downlink", meth, *tail]
                if rank is not None:
                    runs[f"powersgd-{b}-alpha{a}-seed{s}"] = [*base, "--method", "powersgd", "--rank", str(rank),
                                                              "--value-bits", "8", "--downlink", "powersgd", *tail]
    return runs


FRONTIER_RIVALS = ("powersgd", "topk-golomb", "stc-golomb")
FRONTIER_LABELS = {"1k": "about 1 KB", "3k": "3.2 KB", "12k": "12 KB"}


def frontier_oneway_runs() -> dict[str, list[str]]:
    """The MLP one way at 3.2 KB a payload (issue 31, item 4: every model one way as well as both ways): the
    frontier's 3.2 KB runs (synthesis 8-bit M = 4 at full resolution and 8-bit R = 14, M = 15; PowerSGD rank 1;
    Top-k and STC with Golomb positions at 3,215 B at most) and FedAvg, with the uplink compressed and the
    downlink dense (no --downlink, no seeded w_1; 3sfc for e3sfc), Dirichlet 0.1 and 1.0, seeds 42 and 43."""
    both = frontier_runs()
    twin = {"fedavg": "fedavg", "3sfc-plus": "e3sfc-plus-3k", "3sfc-res": "e3sfc-res-3k",
            **{o: f"{o}-3k" for o in FRONTIER_RIVALS}}
    runs: dict[str, list[str]] = {}
    for s in (42, 43):
        for a in FRONTIER_ALPHAS:
            for name, of in twin.items():
                args = both[f"{of}-alpha{a}-seed{s}"]
                pairs = [(k, v) for k, v in zip(args[::2], args[1::2]) if k not in ("--downlink", "--init")]
                runs[f"{name}-alpha{a}-seed{s}"] = [x for k, v in pairs
                                                    for x in (k, "3sfc" if (k, v) == ("--method", "e3sfc") else v)]
    return runs


def frontier_oneway_settings() -> list[Setting]:
    return [(f"alpha {a}, 3.2 KB, one way", f"fedavg-alpha{a}", {m: f"{m}-alpha{a}" for m in ("3sfc-plus", "3sfc-res")},
             {o: f"{o}-alpha{a}" for o in FRONTIER_RIVALS}) for a in FRONTIER_ALPHAS]


def frontier_oneway_curve(run) -> str:
    return re.sub(r"-alpha[\d.]+-seed\d+$", "", run.path.name)


def frontier_convnet_runs() -> dict[str, list[str]]:
    """The ConvNet at 3.2 KB a payload (issue 30, item 4): each method one way (uplink compressed, dense
    downlink) and both ways, seeds 42 and 43. Sized for a CPU (a 3SFC round of the ConvNet on all 60,000
    images: 40-80 s here): 12,000 training images and 50 rounds, as the anymodel group. Synthesis: the
    published M = 1 (float32), 8-bit M = 4 at full resolution (3,215 B) and 8-bit R = 14, M = 15 (3,129 B;
    the MLP map's choice at 3.2 KB, not mapped on the ConvNet), and one way only the latter with one scale per
    parameter tensor (3,197 B; added for issue 31's ConvNet goal, which is one way); PowerSGD rank 1 (its largest
    under 3.2 KB, 2,682 B); Top-k and STC with Golomb positions at 3,215 B at most."""
    base = ["--config", "configs/convnet.toml", "--train-subset", "12000", "--rounds", "50"]
    synth = {"": ["--samples", "1", "--steps", "10"],
             "-plus": ["--samples", "4", "--feature-bits", "8", "--steps", "10"],
             "-res": ["--samples", "15", "--feature-bits", "8", "--feature-res", "14", "--steps", "10"]}
    rivals = {"powersgd": ["powersgd", "--rank", "1", "--value-bits", "8"],
              **{f"{m}-golomb": coded_sparsifier(m, 3215) for m in ("topk", "stc")}}
    runs: dict[str, list[str]] = {}
    for s in (42, 43):  # seed 42 first: the whole picture at one seed before the second
        tail = ["--seed", str(s)]
        runs[f"fedavg-seed{s}"] = [*base, "--method", "fedavg", *tail]
        for way in ("oneway", "twoway"):
            two = ["--init", "seed"] if way == "twoway" else []
            for name, (meth, *opts) in rivals.items():
                down = ["--downlink", meth] if way == "twoway" else []
                runs[f"{name}-{way}-seed{s}"] = [*base, "--method", meth, *opts, *down, *two, *tail]
            for suffix, opts in synth.items():
                meth = "e3sfc" if way == "twoway" else "3sfc"
                runs[f"{meth}{suffix}-{way}-seed{s}"] = [*base, "--method", meth, *opts, *two, *tail]
        runs[f"3sfc-res-tensor-oneway-seed{s}"] = [*base, "--method", "3sfc", *synth["-res"], "--scales", "tensor",
                                                   *tail]
        runs[f"3sfc-res-tensor-data-oneway-seed{s}"] = [*base, "--method", "3sfc", *synth["-res"], "--scales",
                                                        "tensor", "--feature-init", "data", *tail]
    return runs


def frontier_convnet_settings() -> list[Setting]:
    out: list[Setting] = []
    for way in ("twoway", "oneway"):
        m = "e3sfc" if way == "twoway" else "3sfc"
        extra = ("-res-tensor", "-res-tensor-data") if way == "oneway" else ()
        out.append((f"ConvNet {'both ways' if way == 'twoway' else 'one way'}, 3.2 KB", "fedavg",
                    {f"{m}{x}": f"{m}{x}-{way}" for x in ("-plus", "-res", *extra, "")},
                    {o: f"{o}-{way}" for o in FRONTIER_RIVALS}))
    return out


# Any model (issue 31): Flower's quickstart CNN on Fashion-MNIST padded to 3x32x32 RGB (a stand-in for
# CIFAR-sized inputs), 12,000 training images (the probe), 50 rounds (CPU-bound). Synthesis sizes itself
# with --payload-bytes (configs/e3sfc-cnn.toml's rule): 8x8 features, M = 15, 3,069 B at 3,215; 4x4 features,
# M = 13, 793 B at 833. At 3.2 KB both ways also full-resolution features (8-bit, M = 1, 3,121 B), the choice the
# rule replaced. Top-k and STC take the rule's payload bytes at most (bytes:N; tests/test_report.py checks N
# against the fit); PowerSGD rank 2, 8-bit (3,137 B) is its largest setting under 3.2 KB, none near 1 KB (its
# float32 biases alone are 944 B). The MLP's and the ConvNet's rows are the frontier and frontier-convnet groups'.
ANYMODEL_BUDGETS = (("1k", 833, 793), ("3k", 3215, 3069))  # (name, --payload-bytes, the payload it fits)


def anymodel_runs() -> dict[str, list[str]]:
    base = ["--config", "configs/reference.toml", "--dataset", "fmnist-rgb32", "--model", "quickcnn", "--rounds", "50",
            "--train-subset", "12000", "--init", "seed"]
    runs: dict[str, list[str]] = {}
    for s in (42, 43):
        tail = ["--seed", str(s)]
        runs[f"fedavg-seed{s}"] = [*base, "--method", "fedavg", *tail]
        for b, budget, size in ANYMODEL_BUDGETS:
            for way in ("twoway", "oneway") if b == "3k" else ("twoway",):
                synth = "e3sfc" if way == "twoway" else "3sfc"
                runs[f"{synth}-cnn-{b}-{way}-seed{s}"] = [*base, "--method", synth, "--payload-bytes", str(budget),
                                                          "--steps", "10", *tail]
                runs[f"{synth}-cnn-data-{b}-{way}-seed{s}"] = [*runs[f"{synth}-cnn-{b}-{way}-seed{s}"][:-2],
                                                               "--feature-init", "data", *tail]
                if (b, way) == ("3k", "twoway"):
                    runs[f"e3sfc-full-{b}-{way}-seed{s}"] = [*base, "--method", "e3sfc", "--samples", "1",
                                                             "--feature-bits", "8", "--steps", "10", *tail]
                rivals = {f"{m}-golomb": coded_sparsifier(m, size) for m in ("topk", "stc")}
                if b == "3k":
                    rivals["powersgd"] = ["powersgd", "--rank", "2", "--value-bits", "8"]
                for name, (meth, *opts) in rivals.items():
                    down = ["--downlink", meth] if way == "twoway" else []
                    runs[f"{name}-{b}-{way}-seed{s}"] = [*base, "--method", meth, *opts, *down, *tail]
    return runs


def anymodel_settings() -> list[Setting]:
    out: list[Setting] = []
    for b, way in (("3k", "twoway"), ("1k", "twoway"), ("3k", "oneway")):
        synth = "e3sfc-cnn" if way == "twoway" else "3sfc-cnn"
        mine = {synth: f"{synth}-{b}-{way}", f"{synth}-data": f"{synth}-data-{b}-{way}"}
        if (b, way) == ("3k", "twoway"):
            mine["e3sfc-full"] = f"e3sfc-full-{b}-{way}"
        out.append((f"quickcnn {'both ways' if way == 'twoway' else 'one way'}, {FRONTIER_LABELS[b]}", "fedavg",
                    mine, {o: f"{o}-{b}-{way}" for o in FRONTIER_RIVALS}))
    return out


def anymodel_curve(run) -> str:
    """The line an anymodel or frontier-convnet run belongs to: its name without budget, way and seed."""
    name = re.sub(r"-((1k|3k)-)?(oneway|twoway)$", "", re.sub(r"-seed\d+$", "", run.path.name))
    return f"{name} (published: M = 1, float32)" if name in ("3sfc", "e3sfc") else name


def anymodel_panel(run) -> str:
    return "one way (dense downlink)" if "-oneway-" in run.path.name else "both ways"


def frontier_curve(run) -> str:
    """The line a frontier run belongs to: its name without budget, alpha and seed."""
    name = re.sub(r"-alpha[\d.]+-seed\d+$", "", run.path.name)
    return "e3sfc (published: M = 1, float32)" if name == "e3sfc-3k" else re.sub(r"-(1k|3k|12k)$", "", name)


def frontier_panel(run) -> str:
    return f"Dirichlet alpha {run.config['alpha']}"


def _frontier_seeds(by: dict[str, dict], name: str) -> dict[int, dict]:
    return {s: by[f"{name}-seed{s}"] for s in (42, 43) if f"{name}-seed{s}" in by}


# A setting of an accuracy-per-byte group: (label, FedAvg's run name, the synthesis runs {method: name},
# the rivals' runs {method: name}); run names without their -seedN
Setting = tuple[str, str, dict[str, str], dict[str, str]]


def frontier_settings() -> list[Setting]:
    return [(f"alpha {a}, {FRONTIER_LABELS[b]}", f"fedavg-alpha{a}",
             {m: f"{m}-{b}-alpha{a}" for m in ("e3sfc-plus", "e3sfc-res")},
             {o: f"{o}-{b}-alpha{a}" for o in FRONTIER_RIVALS}) for a in FRONTIER_ALPHAS for b, *_ in FRONTIER_BUDGETS]


def settings_table(rows: list[dict], settings: list[Setting]) -> str:
    """Per setting: each method's final accuracy (mean of the last 10 rounds, mean over the seeds run,
    their spread), its MB in all and its seconds a round against FedAvg's, and the winner."""
    by = {r["run"]: r for r in rows}
    # the wall clock of these runs, which may have shared the machine (each section says): not a timing of the methods
    head = ["setting", "method", "seeds", "final accuracy (spread)", "MB in all",
            "wall s / round vs FedAvg (shared machine)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, fedavg, mine, rivals in settings:
        fed = _frontier_seeds(by, fedavg)
        fed_s = sum(r["seconds_per_round"] for r in fed.values()) / len(fed) if fed else None
        cells = []
        for m, name in {**mine, **rivals}.items():
            got = _frontier_seeds(by, name)
            if not got:
                continue
            acc = [r["acc_last10"] for r in got.values()]
            sec = sum(r["seconds_per_round"] for r in got.values()) / len(got)
            cells.append((sum(acc) / len(acc), m, got, acc, sec))
        cells.sort(key=lambda c: -c[0])
        for i, (mean, m, got, acc, sec) in enumerate(cells):
            spread = f" ({min(acc):.4f}-{max(acc):.4f})" if len(acc) > 1 else ""
            win = f"**{m}**" if i == 0 and len(cells) > 1 else m
            mb = sum(r["total_mb"] for r in got.values()) / len(got)
            ratio = f"{sec / fed_s:.2f}x" if fed_s else "-"
            lines.append(f"| {label} | {win} | {', '.join(map(str, sorted(got)))} | {mean:.4f}{spread} | {mb:.2f} | "
                         f"{ratio} |")
    return "\n".join(lines)


def settings_verdicts(rows: list[dict], settings: list[Setting], goal: str, where: str = "{}") -> list[str]:
    """Each synthesis run against each rival in its setting; then, per setting, the synthesis chosen on seed
    42 (the best of the setting's there, then fixed) and the count of settings where it beats every rival run
    (``goal``: the issue's, said after the count). ``where``: how a verdict names a setting, from its label."""
    by = {r["run"]: r for r in rows}
    out, counted, won, chosen = [], 0, 0, []
    for label, _, mine, rivals in settings:
        at = where.format(label)
        me = {m: _frontier_seeds(by, name) for m, name in mine.items()}
        them = {o: _frontier_seeds(by, name) for o, name in rivals.items()}
        out += [line for m in me for o in them if (line := versus(at, m, me[m], o, them[o]))]
        at42 = {m: got[42]["acc_last10"] for m, got in me.items() if 42 in got}
        if not at42:
            continue
        best = max(at42, key=at42.get)
        lines = [line for o in them if (line := versus(at, best, me[best], o, them[o]))]
        if lines:
            counted += 1
            won += all(" beats " in line for line in lines)
            chosen.append(f"{best} at {label}")
    if counted:
        out.append(f"- The synthesis chosen on seed 42 ({'; '.join(chosen)}) beats every rival run in its setting "
                   f"in {won} of the {counted} settings run so far (mean of the last 10 rounds over the seeds both "
                   f"have; goal: {goal}).")
    return out


# The accuracy-per-byte groups: each run's line and panel in the figure, the settings its table and verdicts
# compare within, and the goal its verdict counts against (the issue's).
BYTE_GROUPS = {
    "frontier": (frontier_curve, frontier_panel, frontier_settings, "5 of 6, two seeds"),
    "frontier-oneway": (frontier_oneway_curve, frontier_panel, frontier_oneway_settings,
                        "none set (issue 31 asks for the measurement)"),
    "frontier-convnet": (anymodel_curve, anymodel_panel, frontier_convnet_settings,
                         "beat every rival both ways, two seeds"),
    "anymodel": (anymodel_curve, anymodel_panel, anymodel_settings,
                 "the issue's is weaker: at least level with the best rival, within the seed spread, both ways at "
                 "3.2 KB and 1 KB, two seeds"),
}
VERDICT_WHERE = {"frontier": "{} a payload each way"}  # the frontier's labels name no direction: it is both ways


def groups(root: Path) -> dict[str, dict[str, list[str]]]:
    ref = reference_runs("configs/reference.toml")
    conv = {k: ["--config", "configs/convnet.toml", *v[2:]]
            for k, v in ref.items() if k in ("fedavg", "3sfc", "e3sfc", *MATCHED)}
    best = best_baseline(root / "reference")
    sweep = {}
    for a in ALPHAS:
        for name in ("3sfc", "e3sfc", best):
            sweep[f"{name}-alpha{a}"] = [*ref[name], "--alpha", a]
    ref_full = {**ref, "e3sfc-reference-lbfgs": [*ref["e3sfc"], "--patience", "0"]}
    seeds = {f"{name}-seed{s}": [*ref_full[name], "--seed", str(s)]
             for s in SEEDS for pair in PAIRS for name in pair}
    seeds["e3sfc-reference-lbfgs-seed42"] = [*ref_full["e3sfc-reference-lbfgs"], "--seed", "42"]
    for s in (42, *SEEDS):
        for name in ("3sfc", "e3sfc"):
            seeds[f"{name}-serial-seed{s}"] = [*ref[name], "--no-batch-search", "--seed", str(s)]
    twoway = {}
    for a in ALPHAS:
        twoway[f"e3sfc-alpha{a}"] = [*ref["e3sfc"], "--alpha", a]
        twoway[f"e3sfc-broadcast-alpha{a}"] = [*ref["e3sfc"], "--init", "broadcast", "--alpha", a]
        for m in ("topk", "stc"):  # compressed both ways with a server residual, E-3SFC's bytes each way
            twoway[f"{m}-twoway-alpha{a}"] = [*ref["fedavg"][:2], "--method", m, "--ratio", "match:3sfc",
                                              "--downlink", m, "--downlink-ratio", "match:3sfc", "--init", "seed",
                                              "--alpha", a]
    beyond = {}  # most telling first: both ways at seed 42 (baselines in twoway), then seed 43, then one way
    for s in (42, 43):
        for a in ALPHAS:
            beyond[f"e3sfc-plus-alpha{a}-seed{s}"] = ["--config", "configs/e3sfc-plus.toml", "--alpha", a,
                                                      "--seed", str(s)]
            if s != 42:
                beyond[f"e3sfc-alpha{a}-seed{s}"] = [*twoway[f"e3sfc-alpha{a}"], "--seed", str(s)]
                for m in ("topk", "stc"):
                    beyond[f"{m}-twoway-alpha{a}-seed{s}"] = [*twoway[f"{m}-twoway-alpha{a}"], "--seed", str(s)]
    for a in ALPHAS:  # the 16-bit alternative: M = 2 at the same bytes
        beyond[f"e3sfc-fp16-alpha{a}-seed42"] = ["--config", "configs/e3sfc-plus.toml", "--samples", "2",
                                                 "--feature-bits", "16", "--alpha", a, "--seed", "42"]
    for s in (42, 43):
        for a in ("1.0", "0.1", "0.5"):
            beyond[f"3sfc-plus-alpha{a}-seed{s}"] = ["--config", "configs/e3sfc-plus.toml", "--method", "3sfc",
                                                     "--alpha", a, "--seed", str(s)]
            for m in ("stc-match", "topk-match"):
                beyond[f"{m}-alpha{a}-seed{s}"] = [*ref[m], "--alpha", a, "--seed", str(s)]
    options = {}  # issue 16's options, each alone against e3sfc-plus (beyond), at the same total bytes
    for s in (42, 43):
        for a in ALPHAS:
            plus = beyond[f"e3sfc-plus-alpha{a}-seed{s}"]
            options[f"tensor-scales-alpha{a}-seed{s}"] = [*plus, "--scales", "tensor"]
            options[f"down6-up2-alpha{a}-seed{s}"] = [*plus, "--samples", "2", "--downlink-samples", "6"]
            if a != "0.5":  # it loses badly at alpha 0.1 and 1.0; not run at 0.5
                options[f"warm-start-alpha{a}-seed{s}"] = [*plus, "--warm-start"]
                # issue 34: shorter searches (a third fewer evaluations up, 40% fewer down; benchmarks/RESULTS.md)
                options[f"short-search-alpha{a}-seed{s}"] = [*plus, "--patience", "10", "--downlink-patience", "20"]
                # issue 34: an L-BFGS history of 20 pairs instead of 100 (17-18% of the M = 4 search's time)
                options[f"history20-alpha{a}-seed{s}"] = [*plus, "--history", "20"]
                # both together: the fastest of these (1.44x a FedAvg round against e3sfc-plus's 1.89x)
                options[f"fast-search-alpha{a}-seed{s}"] = [*plus, "--patience", "10", "--downlink-patience", "20",
                                                            "--history", "20"]
    convnet_beyond = {}  # one way on the ConvNet at M = 1's uplink bytes: the published 3SFC, 8-bit M = 4, Top-k, STC
    for s in (42, 43):
        for name in ("3sfc", "topk-match", "stc-match"):
            convnet_beyond[f"{name}-seed{s}"] = [*conv[name], "--seed", str(s)]
        convnet_beyond[f"3sfc-plus-seed{s}"] = [*conv["3sfc"], "--samples", "4", "--feature-bits", "8",
                                                "--seed", str(s)]
    faithful = {}  # the authors' protocol beside the project's, same methods and seed
    for name, args in (("fedavg", ["--method", "fedavg"]), ("3sfc", ["--method", "3sfc"]),
                       ("e3sfc", ["--method", "e3sfc"]), ("topk", ["--method", "topk", "--ratio", "0.01"])):
        faithful[f"{name}-authors"] = ["--config", "configs/authors.toml", *args]
        faithful[f"{name}-ours"] = ["--config", "configs/reference.toml", *args]
    budget = {}  # issue 22: the schedules against each other at equal total bytes
    for b in (BUDGET, BUDGET // 2):
        for a in ("1.0", "0.1"):
            for sch in ("constant", "decay", "adaptive"):
                for s in (42, 43):
                    budget[f"{sch}-{b // 1000}k-alpha{a}-seed{s}"] = [
                        *ref["e3sfc"], "--schedule", sch, "--budget-bytes", str(b), "--target-cosine", "0.3",
                        "--alpha", a, "--seed", str(s)]
    text = {}  # runs only where the files are (text_files_present)
    for ds in TEXT_SETS:
        for name, args in (("fedavg", ["--method", "fedavg"]), ("3sfc", ["--method", "3sfc"]),
                           ("e3sfc", ["--method", "e3sfc"]),
                           ("topk-match", ["--method", "topk", "--ratio", "match:3sfc"]),
                           ("stc-match", ["--method", "stc", "--ratio", "match:3sfc"])):
            text[f"{ds}-textbag-{name}"] = ["--config", "configs/text.toml", "--dataset", ds, *args]
        for name in ("fedavg", "3sfc"):
            text[f"{ds}-transformer-{name}"] = ["--config", "configs/text.toml", "--dataset", ds, "--model",
                                                "transformer", "--method", name]
    frontier = frontier_runs()
    return {"reference": ref, "convnet": conv, "noniid": sweep, "seeds": seeds, "twoway": twoway, "beyond": beyond,
            "options": options, "convnet-beyond": convnet_beyond, "faithful": faithful, "text": text,
            "budget": budget, "frontier": frontier, "frontier-oneway": frontier_oneway_runs(),
            "frontier-convnet": frontier_convnet_runs(),
            "anymodel": anymodel_runs()}


def run_one(out: Path, args: list[str], extra: list[str]) -> tuple[str, int]:
    e3sfc = [sys.executable, "-m", "e3sfc.cli"]
    if (out / "summary.json").is_file():
        return f"skip {out} (done)", 0
    if (out / "checkpoint.pt").is_file():
        cmd = [*e3sfc, "run", "--resume", str(out)]
    else:
        if (out / "config.json").is_file():  # started, stopped before its first checkpoint: start again
            shutil.rmtree(out)
        cmd = [*e3sfc, "run", *args, "--threads", "1", "--checkpoint-every", "10", *extra, "--out", str(out)]
    t0 = time.time()
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f"{out.name}.log", "w") as f:
        rc = subprocess.call(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    return f"{'done' if rc == 0 else 'FAILED'} {out.name} in {time.time() - t0:.0f} s: {shlex.join(cmd)}", rc


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}"


TITLES = {
    "anymodel": "Any model: Flower's quickstart CNN (62,006 parameters) on Fashion-MNIST padded to 3x32x32 RGB, a "
                "stand-in for CIFAR-sized inputs (12,000 training images, 10 clients, Dirichlet 1.0, 50 rounds, seeds "
                "42 and 43): synthesis sized by --payload-bytes against PowerSGD, coded Top-k and coded STC at about "
                "3.2 KB (both ways and one way) and 1 KB (both ways) a payload; the MLP's and the ConvNet's rows are "
                "the frontier, frontier-oneway and frontier-convnet groups",
    "frontier-oneway": "Accuracy per byte, one way (uplink compressed, dense downlink): each method's 3.2 KB setting "
                       "(MLP, Fashion-MNIST, Dirichlet 0.1 and 1.0, seeds 42 and 43)",
    "frontier-convnet": "Accuracy per byte on the ConvNet (convnet-fast) at 3.2 KB a payload, one way and both ways "
                        "(Fashion-MNIST, 12,000 training images, 10 clients, Dirichlet 1.0, 50 rounds, seeds 42 and "
                        "43)",
    "frontier": "Accuracy per byte, both ways: each method's best setting at about 1 KB, 3.2 KB and 12 KB a payload "
                "each way (MLP, Fashion-MNIST, Dirichlet 0.1 and 1.0, seeds 42 and 43)",
    "reference": "Reference setting: Fashion-MNIST, MLP, 10 clients, Dirichlet alpha 1.0, 100 rounds",
    "convnet": "ConvNet on Fashion-MNIST (otherwise the reference setting)",
    "noniid": "Non-IID sweep: Dirichlet alpha 0.1, 0.5, 1.0 (MLP, Fashion-MNIST)",
    "seeds": "3SFC and E-3SFC with early stop against the full L-BFGS search, and the default batched search "
             "against one at a time (--no-batch-search), more seeds (otherwise the reference setting)",
    "beyond": "Beyond the paper: E-3SFC and 3SFC with 8-bit synthetic features, M = 4 at the bytes of M = 1 "
              "(configs/e3sfc-plus.toml), against Top-k and STC at equal bytes, two seeds (and 16-bit features, "
              "M = 2, one seed)",
    "options": "Beyond the paper, each option alone on top of e3sfc-plus at the same total bytes: one scale per "
               "parameter tensor (--scales tensor, 20 bytes more a payload), the broadcast's share (uplink M = 2, "
               "downlink M = 6), warm start (--warm-start), shorter searches (--patience 10 --downlink-patience "
               "20); two seeds",
    "convnet-beyond": "ConvNet, one way at the uplink bytes of M = 1: the published 3SFC, 8-bit M = 4, Top-k and STC, "
                      "two seeds",
    "faithful": "The authors' protocol (configs/authors.toml) beside the project's (configs/reference.toml): "
                "FedAvg, 3SFC, E-3SFC and Top-k 1% on Fashion-MNIST/MLP, Dirichlet 1.0, 100 rounds, seed 42",
    "budget": "Budget schedules against each other at equal total bytes: E-3SFC with 12.86 MB and 6.43 MB, "
              "Dirichlet 1.0 and 0.1, constant, decay and adaptive, two seeds (otherwise the reference setting)",
    "text": "Text: AG News, IMDB and Sogou News with textbag (FedAvg, 3SFC, E-3SFC, Top-k and STC at 3SFC's bytes) "
            "and the transformer (FedAvg, 3SFC), 10 clients, Dirichlet 1.0, 50 rounds (configs/text.toml)",
    "twoway": "Both directions compressed: E-3SFC against Top-k and STC with a compressed downlink (server residual, "
              "as DoubleSqueeze) at E-3SFC's bytes each way, Dirichlet alpha 0.1, 0.5, 1.0 (otherwise the "
              "reference setting)",
}


NOTES = {  # where a group's runs were made, when not all on one machine, and with which code
    "noniid": "Made with the batched search the default, on the machine above. alpha 1.0 repeats the reference "
              "group's 3sfc and e3sfc, which ran on another machine (torch 2.11 on an Intel host): e3sfc ends at "
              "0.6913 here against 0.7685 there, 3sfc at 0.8251 against 0.8266; float rounding moves E-3SFC's "
              "run as much as a change of seed does (seeds group: 0.733 to 0.769).",
    "twoway": "Made again on the machine above (2026-12-07), the batched search the default, beside other runs. "
              "Top-k and STC end as they did on the Intel host, digit for digit; the E-3SFC runs move with float "
              "rounding (before, with the search one at a time: 0.7237 / 0.7609 / 0.7216 at alpha 0.1 / 0.5 / 1.0).",
    "beyond": "Made again on the machine above (2026-12-07), the batched search the default, beside other runs; "
              "its seed-42 baselines both ways are the twoway group's runs. Top-k and STC end as before digit "
              "for digit; the synthesis runs move by a few tenths of a point (the earlier ones ran the search "
              "one at a time).",
    "faithful": "Made again on the machine above (2026-12-07), the batched search the default, two runs side by side; "
                "the runs before (the search one at a time, an Intel host) ended at 3sfc 0.7261 / 0.8223 and e3sfc "
                "0.6525 / 0.7216 (authors' protocol / ours), fedavg and topk as here: float rounding and the "
                "batching move a 100-round synthesis run about as much as a change of seed.",
    "options": "Made again on the machine above (2026-12-07), the batched search the default, two runs side by "
               "side, as were the beyond group's e3sfc-plus runs the verdicts compare them with (the earlier options "
               "runs were made one search at a time, partly on an H100 host).",
    "convnet-beyond": "Ran on an NVIDIA H100 host with --device cuda --batch-search, eight runs sharing the GPU "
                      "(2026-11-27). Top-k and STC finished; the 3SFC runs took 35-50 s a round there and were "
                      "stopped after 9-13 rounds when the session's 15 minutes of GPU time ran out. Their "
                      "config.json said model convnet, the name the project's ConvNet had then (28,650 parameters, "
                      "summary.json): today's convnet-fast, the name it now says. 3sfc-plus "
                      "(seeds 42 and 43) then ran on the machine above, on its CPU (the batched search, the "
                      "default there), two runs side by side; float rounding differs between the two machines "
                      "about as much as a change of seed moves a run. 3sfc-seed42 is the convnet group's 3sfc (the "
                      "same arguments, the machine above, CPU); 3sfc-seed43 has not been run.",
    "convnet": "Made on three machines, with the code of 2026-11-27 (the model named in config.json, convnet-fast, "
               "28,650 parameters in every summary.json). fedavg on an NVIDIA H200 host with --device cuda "
               "--batch-search; topk-match and stc-match are the seed-42 runs of the convnet-beyond group (the same "
               "arguments; NVIDIA H100 host, --device cuda); 3sfc and e3sfc on the machine above, on its CPU, two "
               "runs side by side. e3sfc on the H200 stopped in round 2: a replica's decode of the broadcast differed "
               "from the server's in the last bits (cuDNN's default weight-gradient kernels are not deterministic); "
               "decoding now runs with deterministic cuDNN, not yet re-run on a GPU. The s / round column compares "
               "machines, not methods; float rounding differs between machines about as much as a change of seed.",
    "frontier-convnet": "Made on the machine above (2026-12-07), on its CPU, two runs side by side and other jobs "
                        "at times (the two R = 14 runs of seed 42 paused for about 11 minutes once, and were "
                        "stopped and resumed from their checkpoints once), so the s / round column measures the "
                        "load more than the methods; benchmarks/round_time.py times methods side by side. Seed 42 "
                        "first, seed 43 after. The two 3sfc-res-tensor runs (one scale per parameter tensor) were "
                        "added on 2026-12-08 on an Intel Xeon (2 cores, the same torch and Python), side by side: "
                        "float rounding differs between the two machines about as much as a change of seed, and "
                        "their s / round is not comparable with the other runs'. The two 3sfc-res-tensor-data runs "
                        "(the same, each client's search started from its own samples: --feature-init data) were "
                        "added on the same Intel Xeon on 2026-12-08, with up to four other jobs at times.",
    "anymodel": "Made on the machine above (2026-12-06 and 07), on its CPU, runs side by side. The six -data runs "
                "(--feature-init data: each client's search starts from its own samples) were added on 2026-12-08 "
                "on an Intel Xeon (2 cores, the same torch and Python) with up to five jobs sharing its two cores: "
                "float rounding differs between the two machines about as much as a change of seed, and their "
                "s / round measures the load, not the method (benchmarks/RESULTS.md times methods side by side).",
    "frontier-oneway": "The frontier's 3.2 KB settings, chosen on its both-ways runs, not tuned one way. Made on the "
                       "machine above from 2026-12-07, on its CPU, two runs side by side and other jobs at times, "
                       "so the s / round column measures the load more than the methods.",
    "frontier": "Seed 42 first (the whole map at one seed), seed 43 after; the synthesis settings were chosen on seed "
                "42 (e3sfc-plus: the published payload size, 8-bit M = 4 at full resolution, and its 1 and 12 KB "
                "siblings; e3sfc-res: the lower feature resolution the rate-distortion map picked), so seed 43 is "
                "the check. These runs shared the machine with other jobs (load 4 to 6 on 2 cores), so the "
                "s / round column measures the load more than the methods; benchmarks/round_time.py times methods "
                "side by side.",
    "reference": "Made again on the machine above (2026-12-07), the batched search the default, beside one run of "
                 "another group. Before (16 cores of an NVIDIA H200 host, Intel Xeon, torch 2.11) e3sfc ended at "
                 "0.7685, fedsynth at 0.6058 and e3sfc-budget-decay at 0.7726, the others within 0.2 points of "
                 "here (fedavg 0.8532, 3sfc 0.8266, topk-match 0.8251, stc-match 0.8289): the runs whose last "
                 "rounds swing move with float rounding as much as with a change of seed (seeds group).",
    "seeds": "All 21 runs made again on the machine above, with the batched search the default (the -serial runs "
             "with --no-batch-search); seed 42's 3sfc, 3sfc-reference-lbfgs and e3sfc are the reference group's.",
    "budget": "All 24 runs made again on the machine above with the batched search (the default), so that only "
              "the schedule differs. Plainly: no "
              "schedule beats constant, which stays the default. Tried: moving M by one sample a round on the "
              "last cosine (0.780 against 0.822 in the reference group, before pacing), paced spending shaped "
              "by target / last cosine within 1/2..2 (0.789 against 0.821, seeds 42 and 43, 12.86 MB, alpha "
              "1.0), decay (3.2 and 5.7 points behind here), and the current rule, which splits each round's bytes "
              "between uplink and broadcast by the measured per-sample capture: it chooses what constant "
              "chooses in 98 of 100 rounds at 12.86 MB (the product of the captured shares is largest at an "
              "even split until far more samples are affordable) and in every round at 6.43 MB, where M = 1 "
              "both ways already costs 6.36 MB of the 6.43, so no schedule has room to differ (in the figure, "
              "constant lies under adaptive and, at 6.43 MB, under decay). The two "
              "6.43 MB settings are ties by construction, not evidence.",
}


def seed_runs(root: Path) -> dict[str, dict[int, Path]]:
    """The seed comparison's finished runs: for each run name of PAIRS and SERIAL, its folder by seed (seed 42
    from the reference group where that group has the run, else the seeds group's). The seeds group's figure
    draws these runs and :func:`seed_verdicts` averages them: the same seeds in both."""
    out: dict[str, dict[int, Path]] = {}
    for name in dict.fromkeys(n for pair in (*PAIRS, *SERIAL) for n in pair):
        for s in (42, *SEEDS):
            d = root / "seeds" / f"{name}-seed{s}"
            if s == 42 and (root / "reference" / name / "summary.json").is_file():
                d = root / "reference" / name
            if (d / "summary.json").is_file():
                out.setdefault(name, {})[s] = d
    return out


def seed_verdicts(root: Path) -> list[str]:
    """Early stop against the full L-BFGS search, per seed and on average, over every seed run so far
    (:func:`seed_runs`). Compared: the mean accuracy over the last 10% of rounds (the final round alone
    moves by points from round to round)."""
    out = []
    runs = seed_runs(root)
    labelled = [(p, "early stop") for p in PAIRS] + [(p, "batched search, the default") for p in SERIAL]
    for (fast, full), what in labelled:
        acc = {name: {s: compare_rows([load_run(d)])[0]["acc_last10"] for s, d in runs.get(name, {}).items()}
               for name in (fast, full)}
        both = sorted(set(acc[fast]) & set(acc[full]))
        if not both:
            continue
        a, b = [acc[fast][s] for s in both], [acc[full][s] for s in both]
        wins = sum(x >= y for x, y in zip(a, b))
        out.append(f"- {fast} ({what}) against {full}, mean accuracy over the last 10 rounds, seeds "
                   f"{', '.join(map(str, both))}: {sum(a) / len(a):.4f} against {sum(b) / len(b):.4f} on average; "
                   f"{fast} at least as accurate in {wins} of {len(both)} seeds (per seed: "
                   + ", ".join(f"{s}: {x:.4f} vs {y:.4f}" for s, x, y in zip(both, a, b)) + ").")
    return out


def noniid_verdicts(rows: list[dict]) -> list[str]:
    """Per alpha: 3SFC and E-3SFC against the matched-bytes baseline, on the mean accuracy of the last 10%."""
    by = {r["run"]: r for r in rows}
    out = []
    for a in ALPHAS:
        base = next((r for n, r in by.items() if n.endswith(f"-alpha{a}") and n.split("-alpha")[0] in MATCHED), None)
        for name in ("3sfc", "e3sfc"):
            r = by.get(f"{name}-alpha{a}")
            if r and base:
                d = (r["acc_last10"] - base["acc_last10"]) * 100
                down_r, down_b = r["down_bytes_per_client_round"], base["down_bytes_per_client_round"]
                out.append(f"- alpha {a}: {name} {'beats' if d > 0 else 'loses to'} {base['run'].split('-alpha')[0]} "
                           f"at equal uplink bytes by {abs(d):.1f} points (mean of the last 10 rounds, "
                           f"{r['acc_last10']:.4f} against {base['acc_last10']:.4f})"
                           + (f" while sending {down_b / down_r:,.0f}x fewer bytes down." if down_r < down_b else "."))
    return out


def twoway_verdicts(rows: list[dict]) -> list[str]:
    """Per alpha: E-3SFC against Top-k and STC compressed both ways, at equal total bytes (checked)."""
    by = {r["run"]: r for r in rows}
    out = []
    for a in ALPHAS:
        e = by.get(f"e3sfc-alpha{a}")
        if not e:
            continue
        for m in ("topk", "stc"):
            b = by.get(f"{m}-twoway-alpha{a}")
            if not b:
                continue
            gap = abs(b["total_mb"] / e["total_mb"] - 1) * 100
            d = (e["acc_last10"] - b["acc_last10"]) * 100
            out.append(f"- alpha {a}: e3sfc {'beats' if d > 0 else 'loses to'} {m} compressed both ways by "
                       f"{abs(d):.1f} points (mean of the last 10 rounds, {e['acc_last10']:.4f} against "
                       f"{b['acc_last10']:.4f}) with {e['total_mb']:.2f} MB against {b['total_mb']:.2f} MB sent in all "
                       f"({gap:.1f}% apart); " + mb_verdict(e, [b]))
        w = by.get(f"e3sfc-broadcast-alpha{a}")
        if w:
            out.append(f"- alpha {a}: e3sfc with --init broadcast (w_1 shipped to each client, counted) sends "
                       f"{w['total_mb']:.2f} MB in all, {w['ratio_vs_dense']:.1f}x fewer bytes than FedAvg both ways; "
                       f"mean of the last 10 rounds {w['acc_last10']:.4f}.")
    return out


def beyond_verdicts(root: Path, rows: list[dict]) -> list[str]:
    """Per alpha, mean over the seeds run so far: the 8-bit configuration against the baselines at equal
    bytes (both ways: Top-k and STC compressed both ways; one way: STC at 3SFC's uplink bytes). Seed 42
    of a baseline comes from the twoway group where this group has no run of its own."""
    by = {r["run"]: r for r in rows}

    def seed_rows(name: str, a: str) -> dict[int, dict]:
        out = {}
        for s in (42, 43):
            r = by.get(f"{name}-alpha{a}-seed{s}")
            if r is None and s == 42 and (root / "twoway" / f"{name}-alpha{a}" / "summary.json").is_file():
                r = compare_rows([load_run(root / "twoway" / f"{name}-alpha{a}")], 0.70)[0]
            if r is not None:
                out[s] = r
        return out

    out = []
    for mine, others, how in (("e3sfc-plus", ("topk-twoway", "stc-twoway", "e3sfc"), "total bytes, both ways"),
                              ("e3sfc-fp16", ("e3sfc-plus", "e3sfc"), "total bytes, both ways"),
                              ("3sfc-plus", ("stc-match", "topk-match"), "uplink bytes, one way")):
        for a in ALPHAS:
            me = seed_rows(mine, a)
            for o in others:
                line = versus(f"alpha {a}, {how}", mine, me, o, seed_rows(o, a))
                if line:
                    out.append(line)
    return out


def versus(where: str, mine: str, me: dict[int, dict], o: str, them: dict[int, dict]) -> str | None:
    """One verdict line: ``mine`` against ``o`` over the seeds both have (rows by seed), or None."""
    both = sorted(set(me) & set(them))
    if not both:
        return None
    x = [me[s]["acc_last10"] for s in both]
    y = [them[s]["acc_last10"] for s in both]
    d = (sum(x) - sum(y)) / len(both) * 100
    spread = f"; seed spread {min(x):.4f}-{max(x):.4f} against {min(y):.4f}-{max(y):.4f}" if len(both) > 1 else ""
    verb = "ties with" if round(abs(d), 1) == 0 else "beats" if d > 0 else "loses to"
    return (f"- {where}: {mine} {verb} {o} by {abs(d):.1f} points "
            f"(mean of the last 10 rounds over seed{'s' if len(both) > 1 else ''} {', '.join(map(str, both))}: "
            f"{sum(x) / len(x):.4f} against {sum(y) / len(y):.4f}{spread}; MB in all at seed {both[0]}: "
            f"{me[both[0]]['total_mb']:.2f} against {them[both[0]]['total_mb']:.2f}).")


def convnet_beyond_verdicts(rows: list[dict]) -> list[str]:
    """The synthesis runs against Top-k and STC at the same uplink bytes on the ConvNet, mean over the seeds
    both have run."""
    by = {r["run"]: r for r in rows}

    def seed_rows(name: str) -> dict[int, dict]:
        return {s: by[f"{name}-seed{s}"] for s in (42, 43) if f"{name}-seed{s}" in by}

    return [line for mine in ("3sfc-plus", "3sfc") for o in ("topk-match", "stc-match")
            if (line := versus("ConvNet, uplink bytes, one way", mine, seed_rows(mine), o, seed_rows(o)))]


def faithful_verdicts(rows: list[dict], root: Path) -> list[str]:
    """Per method: the authors' protocol against the project's, same seed (one seed: a measurement of
    how far the protocol moves a run, not a claim about either)."""
    by = {r["run"]: r for r in rows}
    out = []
    for m in ("fedavg", "3sfc", "e3sfc", "topk"):
        a, e = by.get(f"{m}-authors"), by.get(f"{m}-ours")
        if not (a and e):
            continue
        d = (a["acc_last10"] - e["acc_last10"]) * 100
        rows_a = load_run(root / "faithful" / f"{m}-authors").rows[-10:]
        cacc = [r["client_accuracy"] for r in rows_a if r.get("client_accuracy") is not None]
        client = f"; the clients' own held-out accuracy {sum(cacc) / len(cacc):.4f}" if cacc else ""
        out.append(f"- {m}: {a['acc_last10']:.4f} under the authors' protocol against {e['acc_last10']:.4f} under "
                   f"the project's ({abs(d):.1f} points {'lower' if d < 0 else 'higher'}; mean of the last 10 rounds, "
                   f"seed 42 only{client}; MB in all {a['total_mb']:.2f} against {e['total_mb']:.2f}).")
    return out


def budget_verdicts(rows: list[dict], root: Path | None = None) -> list[str]:
    """Per budget and alpha, mean over seeds: decay and adaptive against constant (same bytes within 1%);
    with ``root``, also in how many rounds adaptive chose constant's (M up, M down)."""
    import re
    by = {r["run"]: r for r in rows}
    out = []
    settings = sorted({re.sub(r"^(constant|decay|adaptive)-|-seed\d+$", "", n) for n in by})
    for setting in settings:
        base = {s: by[f"constant-{setting}-seed{s}"] for s in (42, 43) if f"constant-{setting}-seed{s}" in by}
        for sch in ("decay", "adaptive"):
            me = {s: by[f"{sch}-{setting}-seed{s}"] for s in (42, 43) if f"{sch}-{setting}-seed{s}" in by}
            line = versus(setting, sch, me, "constant", base)
            if line and sch == "adaptive" and root is not None:
                same = []
                for sd in sorted(set(me) & set(base)):
                    a = json.loads((root / "budget" / f"adaptive-{setting}-seed{sd}" / "summary.json").read_text())
                    c = json.loads((root / "budget" / f"constant-{setting}-seed{sd}" / "summary.json").read_text())
                    downs = a.get("downlink_samples_per_round") or a["samples_per_round"]
                    same.append(sum((u, d) == (m, m) for u, d, m in
                                    zip(a["samples_per_round"], downs, c["samples_per_round"])))
                line = line[:-2] + (f"; adaptive chose constant's M both ways in {' and '.join(map(str, same))} of "
                                    f"{len(downs)} rounds).")
            if line:
                out.append(line)
    return out


REFERENCE_SYNTHESIS = ("fedavg", "3sfc", "e3sfc", "fedsynth")


def figure_panel(group: str, runs: list) -> Callable | None:
    """How a group's figure is split into rows when it would hold more than 8 series (None: one row):
    by Dirichlet alpha (and budget), by dataset, or, for the reference group, the synthesis methods in one
    row and the other compressors in the next, FedAvg and the published 3SFC in both."""
    if len(series_of(runs)) <= 8:
        return None
    if group == "reference":
        both, synth, other = ("synthesis and budgets", "the other compressors"), "synthesis and budgets", \
            "the other compressors"
        return lambda r: (both if r.path.name in ("fedavg", "3sfc") else
                          synth if r.config["method"] in REFERENCE_SYNTHESIS else other)
    if group == "budget":
        return lambda r: f"{r.config['budget_bytes'] / 1e6:.2f} MB, alpha {r.config['alpha']}"
    if len({r.config.get("dataset") for r in runs}) > 1:
        return lambda r: str(r.config["dataset"])
    return lambda r: f"alpha {r.config['alpha']}"


def options_verdicts(root: Path, rows: list[dict]) -> list[str]:
    """Per option and alpha, mean over seeds: the option against e3sfc-plus (the beyond group's runs)
    at the same settings and (within 1%) the same total bytes."""
    by = {r["run"]: r for r in rows}
    out = []
    for opt in ("tensor-scales", "down6-up2", "warm-start", "short-search", "history20", "fast-search"):
        for a in ALPHAS:
            me = {s: by[f"{opt}-alpha{a}-seed{s}"] for s in (42, 43) if f"{opt}-alpha{a}-seed{s}" in by}
            them = {s: compare_rows([load_run(root / "beyond" / f"e3sfc-plus-alpha{a}-seed{s}")], 0.70)[0]
                    for s in me if (root / "beyond" / f"e3sfc-plus-alpha{a}-seed{s}" / "summary.json").is_file()}
            line = versus(f"alpha {a}", opt, me, "e3sfc-plus", them)
            if line:
                out.append(line)
    return out


def time_verdict(r: dict, fed: dict) -> str:
    """How much longer r's round took than FedAvg's, where both ran on the same kind of device."""
    mine, theirs = r.get("device", "cpu"), fed.get("device", "cpu")
    if mine != theirs:
        return (f"its round time does not compare with FedAvg's here ({mine} against {theirs}; "
                "benchmarks/RESULTS.md times them side by side).")
    return (f"a round takes {r['seconds_per_round'] / fed['seconds_per_round']:.1f}x as long here (runs sharing the "
            "machine; benchmarks/RESULTS.md times them side by side).")


def verdicts(rows: list[dict]) -> list[str]:
    """Plain statements of where the synthesis methods win and lose, read off the table."""
    by = {r["run"]: r for r in rows}
    out = []
    fed = by.get("fedavg")
    for name in ("3sfc", "e3sfc"):
        r = by.get(name)
        if not (r and fed):
            continue
        up_ratio = fed["up_bytes_per_client_round"] / r["up_bytes_per_client_round"]
        down_ratio = fed["down_bytes_per_client_round"] / r["down_bytes_per_client_round"]
        gap = (fed["acc_last10"] - r["acc_last10"]) * 100
        out.append(f"- {name} sends {up_ratio:,.0f}x fewer bytes up and {down_ratio:,.0f}x fewer down than FedAvg "
                   f"and is {abs(gap):.1f} points {'below' if gap > 0 else 'above'} it over the last 10% of rounds "
                   f"(mean {r['acc_last10']:.4f} against {fed['acc_last10']:.4f}); " + time_verdict(r, fed))
        for b in MATCHED:
            m = by.get(b)
            if m:
                d = (r["acc_last10"] - m["acc_last10"]) * 100
                out.append(f"  - at equal uplink bytes it {'beats' if d > 0 else 'loses to'} {b} "
                           f"by {abs(d):.1f} points ({r['acc_last10']:.4f} against {m['acc_last10']:.4f}).")
        out.append("  - " + mb_verdict(r, [by[b] for b in ("fedavg", *MATCHED) if b in by]))
    return out


def mb_verdict(r: dict, others: list[dict]) -> str:
    """Megabytes sent up and down in all until the run first reached the target accuracy, against
    the others of its group: what a user paying for both directions compares."""
    mb = r["mb_to_target"]
    if mb is None:
        return "it never reached 0.70 accuracy."
    fewer = [o for o in others if o["mb_to_target"] is not None and o["mb_to_target"] <= mb]
    against = ", ".join(f"{o['run']} {o['mb_to_target']:,.2f}" if o["mb_to_target"] is not None else f"{o['run']} never"
                        for o in others)
    return (f"to reach 0.70 it sent {mb:,.2f} MB up and down in all ({against}): "
            + ("the fewest of these." if not fewer else f"more than {', '.join(o['run'] for o in fewer)}."))


def progress(group_dir: Path, names) -> str:
    """'(in progress: NAME at round T of R, ...)' for the unfinished runs that have metrics on disk."""
    parts = []
    for n in names:
        try:
            run = load_run(group_dir / n)
        except ConfigError:  # not started, or nothing evaluated yet
            continue
        parts.append(f"{n} at round {run.rows[-1]['round']} of {run.config['rounds']}")
    return f" (in progress: {', '.join(parts)})" if parts else ""


def previous_sections(path: Path) -> dict[str, str]:
    """The last report's sections by title (a group whose runs are not on this machine keeps its own)."""
    if not path.is_file():
        return {}
    chunks = re.split(r"^## ", path.read_text(), flags=re.M)[1:]
    return {c.split("\n", 1)[0].strip(): "## " + c.rstrip() + "\n" for c in chunks}


DATE_LINE = re.compile(r"^- date: .*$", re.M)
MACHINE_LINE = re.compile(r"^- machine: (.*)$", re.M)


def write_report(root: Path, names: dict[str, dict[str, list[str]]], docs: Path = REPO / "docs",
                 only: list[str] | None = None) -> Path:
    """docs/results.md and docs/GROUP.png from the finished runs under ``root``. A report that differs
    from the one there only in its date line leaves the file as it is (nothing new: nothing rewritten).
    With ``only``, the other groups keep their sections and figures as they are (where they have one), and the
    header keeps the machine it named (the one the kept sections' "machine above" means; a rebuilt section's
    note says where its runs were made)."""
    from e3sfc.io import atomic_write

    docs.mkdir(exist_ok=True)
    named = MACHINE_LINE.search((docs / "results.md").read_text()) if (docs / "results.md").is_file() else None
    here = named.group(1) if only is not None and named else machine()
    parts = [
        "# Results\n",
        "Every number here comes from the runs of the command below on the machine below; nothing is typed in.",
        "Columns: bytes per client-round up and down (headers included), how many times fewer bytes than the",
        "dense model both ways, test accuracy at 25/50/100% of the rounds, rounds and megabytes (up + down) to",
        "reach 0.70 accuracy, wall seconds per round (one torch thread per run, runs sharing the machine; see",
        "benchmarks/RESULTS.md for timings taken side by side in one process). A group whose runs are not on",
        "the machine that wrote this report keeps its section from the previous report (same command) when that",
        "section holds results. The runs behind a section are committed under experiments/runs (each run's",
        "config, metrics, ledger and summary; not its checkpoints), so that `--report-only` rebuilds it anywhere;",
        "runs made before that change are not there.\n",
        f"- command: `{COMMAND}`", f"- machine: {here}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n",
    ]
    kept = previous_sections(docs / "results.md")
    for group, runs in names.items():
        done = [n for n in runs if (root / group / n / "summary.json").is_file()]
        if group == "text" and not done:
            parts.append(f"## {TITLES[group]}\n")
            parts.append("Not run: the machine that wrote this report has no copy of the AG News, IMDB or Sogou News "
                         "files and no internet. `e3sfc fetch agnews` (imdb, sogou) downloads and checks them, or put "
                         "them under `$E3SFC_DATA` or the user cache (see the README); then run "
                         "`python experiments/suite.py --groups text`.\n")
            continue
        if only is not None and group not in only and TITLES[group] in kept:
            parts.append(kept[TITLES[group]])  # not asked for: left as it is
            continue
        if not (root / group).is_dir() and "\n|" in kept.get(TITLES[group], ""):
            parts.append(kept[TITLES[group]])  # its runs (a table of them) are not on this machine: kept
            continue
        parts.append(f"## {TITLES[group]}\n")
        if group in NOTES:
            parts.append(f"_{NOTES[group]}_\n")
        if not done:
            started = any((root / group / n).is_dir() or (root / group / f"{n}.log").is_file() for n in runs)
            parts.append(("Not finished yet" + progress(root / group, runs) if started else
                          f"Not run yet (`python experiments/suite.py --groups {group}`)") + ".\n")
            continue
        loaded = [load_run(root / group / n) for n in done]
        rows = compare_rows(loaded, 0.70)
        parts.append(markdown_table(rows, 0.70) + "\n")
        cuda = [r.path.name for r in loaded if r.config.get("device") == "cuda"]
        if cuda:
            parts.append(f"Runs on --device cuda (a GPU machine lent for a session, shared with other runs): "
                         f"{', '.join(cuda)}. Their accuracy compares with the others; their seconds per round do "
                         f"not.\n")
        missing = [n for n in runs if n not in done]
        if missing:
            parts.append(f"Not finished yet: {', '.join(missing)}" + progress(root / group, missing) + ".\n")
        if group in BYTE_GROUPS:
            curve, panel, settings, _ = BYTE_GROUPS[group]
            plot_frontier(loaded, docs / f"{group}.png", curve=curve, panel=panel)
            # the figure's final accuracy (the mean of the last 10 rounds, whatever the run's length) in the
            # table and the verdicts below, so that they quote the points drawn
            final = {run.path.name: final_accuracy(run) for run in loaded}
            rows = [{**r, "acc_last10": final[r["run"]]} for r in rows]
            parts.append(f"![{group}]({group}.png)\n")
            parts.append("Each setting's methods, best first (final accuracy: mean of the last 10 rounds):\n\n"
                         + settings_table(rows, settings()) + "\n")
        else:
            figure = loaded
            if group == "seeds":  # the runs the verdicts average, the reference group's seed 42 included
                by_name = seed_runs(root)
                figure = [load_run(d) for by_seed in by_name.values() for d in by_seed.values()]
                borrowed = [n for n, by_seed in by_name.items()
                            if by_seed.get(42, root).parent == root / "reference"]
                if borrowed:
                    parts.append(f"Seed 42 of {', '.join(borrowed)} is the reference group's run (its table); "
                                 "the figure and the comparisons below include it.\n")
            if group == "options":  # beside the e3sfc-plus runs each option is measured against
                plus = [root / "beyond" / f"e3sfc-plus-alpha{a}-seed{sd}" for a in ALPHAS for sd in (42, 43)]
                figure = [load_run(d) for d in plus if (d / "summary.json").is_file()] + loaded  # plain colour
            plot_runs(figure, docs / f"{group}.png", panel=figure_panel(group, figure))
            parts.append(f"![{group}]({group}.png)\n")
        v = {"seeds": lambda: seed_verdicts(root), "noniid": lambda: noniid_verdicts(rows),
             "twoway": lambda: twoway_verdicts(rows), "beyond": lambda: beyond_verdicts(root, rows),
             "options": lambda: options_verdicts(root, rows),
             "convnet-beyond": lambda: convnet_beyond_verdicts(rows),
             "faithful": lambda: faithful_verdicts(rows, root),
             "budget": lambda: budget_verdicts(rows, root),
             **{g: (lambda g=g, settings=settings, goal=goal:
                    settings_verdicts(rows, settings(), goal, VERDICT_WHERE.get(g, "{}")))
                for g, (_, _, settings, goal) in BYTE_GROUPS.items()}}.get(group, lambda: verdicts(rows))()
        if v:
            parts.append("Where the synthesis methods win and lose:\n\n" + "\n".join(v) + "\n")
    text = "\n".join(parts)
    path = docs / "results.md"
    if not (path.is_file() and DATE_LINE.sub("", path.read_text()) == DATE_LINE.sub("", text)):
        atomic_write(path, lambda f: f.write(text))
    return path


def run_rounds(args: list[str]) -> int:
    """The rounds a run of ``args`` has: its --rounds, else its --config file's, else the default 100."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    if "--rounds" in args:
        return int(args[args.index("--rounds") + 1])
    if "--config" in args:
        with open(REPO / args[args.index("--config") + 1], "rb") as f:
            return int(tomllib.load(f).get("rounds", 100))
    return 100


def groups_epilog(root: Path) -> str:
    """--help's list of the groups and what each costs: how many runs of how many rounds."""
    lines = ["groups (a finished run is skipped, so a group costs only its runs not yet done):"]
    for g, runs in groups(root).items():
        by_rounds: dict[int, int] = {}
        for args in runs.values():
            by_rounds[run_rounds(args)] = by_rounds.get(run_rounds(args), 0) + 1
        cost = " and ".join(f"{n} run{'s' if n > 1 else ''} of {r} rounds" for r, n in sorted(by_rounds.items(),
                                                                                                reverse=True))
        lines.append(f"  {g:<16} about {cost}" + (" (only the datasets whose files are here)" if g == "text"
                                                  else ""))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=groups_epilog(REPO / DEFAULT_ROOT))
    ap.add_argument("--groups", default=None,
                    help=f"comma-separated groups to run, of those listed below (default: {DEFAULT_GROUPS}); "
                    "the report then writes only their sections and figures again (with --report-only, default: "
                    "all)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (default: %(default)s)")
    ap.add_argument("--root", default=DEFAULT_ROOT, help="folder of the runs, ROOT/GROUP/NAME (default: %(default)s; "
                    "committed: its config, metrics, ledger and summary files, not its checkpoints)")
    ap.add_argument("--only", default=None, help="comma-separated run names to restrict to")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: write docs/results.md and the figures from the runs on disk (the file is "
                    "left as it is when only its date would change)")
    ap.add_argument("--extra", default="", help="flags added to every new run (e.g. '--device cuda --batch-search': "
                    "where the runs go and how fast, not what they compute)")
    args = ap.parse_args()
    root = (REPO / args.root).resolve()
    extra = shlex.split(args.extra)
    wanted = (args.groups or DEFAULT_GROUPS).split(",")
    unknown = [g for g in wanted if g not in groups(root)]
    if unknown:
        sys.exit(f"suite: unknown group(s) {unknown}; expected some of {', '.join(groups(root))}")
    failed = 0
    only = wanted if args.groups else None  # a named group's run rewrites its sections, not the header's machine
    if not args.report_only:
        for g in wanted:
            todo = groups(root)[g]  # re-read: the non-IID sweep uses the reference group's best baseline
            if g == "text":
                have = text_files_present()
                print(f"text: files found for {', '.join(have) or 'none'} of {', '.join(TEXT_SETS)}", flush=True)
                todo = {n: a for n, a in todo.items() if n.split("-")[0] in have}
            jobs = [(root / g / n, a) for n, a in todo.items() if args.only is None or n in args.only.split(",")]
            with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
                for msg, rc in pool.map(lambda j: run_one(j[0], j[1], extra), jobs):
                    print(msg, flush=True)
                    failed += rc != 0
            write_report(root, groups(root), only=only)
    print(f"wrote {write_report(root, groups(root), only=only)}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
