"""Bad-input census (issue 32's goal): hundreds of bad command lines across every subcommand, each run as
a user would run it (``python -m e3sfc.cli ...`` in its own process, with a time limit), and what came of
them: exit 2 with one line and nothing left behind (the rule), exit 0 (accepted: listed for a person to
judge), or a failure of the rule (a traceback, another exit code, more than one line, a file left
behind after a refusal, or a hang past the time limit).

The cases: every ``run`` flag that takes a value, given each of a few hostile values (negative, NaN,
1e400, 20 digits, a word, 300 characters); TOML configs that are invalid, binary, deeply nested or
hold wrong types; ``--resume`` of a run folder whose checkpoint, metrics, ledger or config was damaged;
IDX data files with the wrong shapes; and ``plot``, ``compare``, ``plot-partition`` and ``fetch`` with
damaged run folders, bad outputs and bad names. Every ``run`` case is a tiny run (digits, 3 clients, 1
round) so that one a value is legal for ends in seconds.

    python benchmarks/bad_input.py [--jobs 2] [--time-limit 300] [--only TEXT]

Writes the section "Bad-input census (issue 32)" of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from _common import write_section

HOSTILE = ["-1", "nan", "1e400", "99999999999999999999", "abc", "x" * 300]
TINY = ["--dataset", "digits", "--clients", "3", "--rounds", "1", "--train-subset", "200", "--test-subset", "100",
        "--threads", "1"]


def run_flags() -> list[str]:
    """Every flag of ``e3sfc run`` that takes a value (from the parser itself, so a new flag is covered), but
    ``--out``, ``--resume`` and ``--config``, which have cases of their own."""
    from e3sfc.cli import build_parser

    p = build_parser()
    run = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices["run"]
    flags = []
    for a in run._actions:
        long = [o for o in a.option_strings if o.startswith("--")]
        if long and a.nargs != 0 and long[0] not in ("--help", "--out", "--resume", "--config"):
            flags.append(long[0])
    return sorted(flags)


def write_idx(path: Path, arr: np.ndarray) -> None:
    """An IDX file (the MNIST format, unsigned bytes), gzipped like the published files."""
    head = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(head + arr.astype(np.uint8).tobytes())


def make_cases(tmp: Path) -> list[tuple[str, list[str], Path | None]]:
    """(what, argv, the folder that must not exist after a refusal) for each case; files the cases read are
    made under ``tmp``."""
    cases: list[tuple[str, list[str], Path | None]] = []
    n = 0

    def out() -> Path:
        nonlocal n
        n += 1
        return tmp / "out" / f"r{n}"

    for flag in run_flags():
        for v in HOSTILE:
            o = out()
            cases.append((f"run {flag} {v[:20]}", ["run", *TINY, flag, v, "--out", str(o)], o))
    # TOML configs
    cfg = tmp / "cfg"
    cfg.mkdir()
    tomls = {
        "invalid": "rounds = = 3\n", "binary": None, "nested": "a = " + "[" * 3000 + "]" * 3000 + "\n",
        "unknown key": "roundz = 3\n", "string rounds": 'rounds = "three"\n',
        "huge rounds": "rounds = 9223372036854775807\n",
        "negative lr": "lr = -0.5\n", "float clients": "clients = 2.5\n", "bool samples": "samples = true\n",
        "unknown method": 'method = "zip"\n', "table": "[rounds]\nx = 1\n", "empty method": 'method = ""\n',
    }
    for name, text in tomls.items():
        f = cfg / (name.replace(" ", "-") + ".toml")
        if text is None:
            f.write_bytes(bytes(range(256)) * 4)
        else:
            f.write_text(text)
        o = out()
        cases.append((f"run --config ({name})", ["run", *TINY, "--config", str(f), "--out", str(o)], o))
    missing = ["run", *TINY, "--config", str(cfg / "none.toml"), "--out", str(out())]
    cases.append(("run --config (missing file)", missing, None))
    # damaged run folders for --resume, plot and compare (a good one is made first, in setup())
    good = tmp / "good"
    for name in ("ckpt-truncated", "ckpt-flipped", "ckpt-junk", "ckpt-empty", "metrics-junk", "ledger-junk",
                 "config-junk", "summary-junk", "config-missing", "metrics-nan"):
        cases.append((f"run --resume ({name})", ["run", "--resume", str(tmp / f"resume-{name}")], None))
        cases.append((f"plot ({name})", ["plot", str(tmp / name), "--out", str(tmp / "plots" / f"{name}.png")],
                      tmp / "plots" / f"{name}.png"))
        cases.append((f"compare ({name})", ["compare", str(tmp / name)], None))
    cases += [
        ("run --resume (no folder)", ["run", "--resume", str(tmp / "nowhere")], None),
        ("run --resume (more settings)", ["run", "--resume", str(good), "--lr", "0.5"], None),
        ("run --resume --rounds 0", ["run", "--resume", str(good), "--rounds", "0"], None),
        ("plot (no folder)", ["plot", str(tmp / "nowhere"), "--out", str(tmp / "p.png")], tmp / "p.png"),
        ("plot --out p.xyz", ["plot", str(good), "--out", str(tmp / "p.xyz")], tmp / "p.xyz"),
        ("plot --out a folder", ["plot", str(good), "--out", str(tmp)], None),
        ("plot --out under /proc", ["plot", str(good), "--out", "/proc/e3sfc.png"], None),
        ("plot --out 300 characters", ["plot", str(good), "--out", str(tmp / ("p" * 300 + ".png"))], None),
        ("plot --out in a missing folder", ["plot", str(good), "--out", str(tmp / "no" / "p.png")], None),
        ("plot --metric zip", ["plot", str(good), "--out", str(tmp / "m.png"), "--metric", "zip"], tmp / "m.png"),
        ("plot --frontier --metric loss", ["plot", str(good), "--frontier", "--metric", "loss", "--out",
                                           str(tmp / "f.png")], tmp / "f.png"),
        ("compare --target 2", ["compare", str(good), "--target", "2"], None),
        ("compare --target abc", ["compare", str(good), "--target", "abc"], None),
        ("compare --target nan", ["compare", str(good), "--target", "nan"], None),
        ("compare --markdown a folder", ["compare", str(good), "--markdown", str(tmp)], None),
        ("compare --markdown under /proc", ["compare", str(good), "--markdown", "/proc/x.md"], None),
        ("fetch zip", ["fetch", "zip"], None),
        ("fetch emnist --emnist-split zip", ["fetch", "emnist", "--emnist-split", "zip"], None),
        ("fetch fmnist --data-dir (empty)", ["fetch", "fmnist", "--data-dir", str(tmp / "empty")], None),
        ("plot-partition --out p.xyz", ["plot-partition", "--dataset", "digits", "--clients", "3", "--out",
                                        str(tmp / "pp.xyz")], tmp / "pp.xyz"),
        ("plot-partition --clients 0", ["plot-partition", "--dataset", "digits", "--clients", "0", "--out",
                                        str(tmp / "pp.png")], tmp / "pp.png"),
        ("plot-partition --alpha -1", ["plot-partition", "--dataset", "digits", "--alpha", "-1", "--out",
                                       str(tmp / "pp2.png")], tmp / "pp2.png"),
        ("plot-partition --dataset zip", ["plot-partition", "--dataset", "zip", "--out", str(tmp / "pp3.png")],
         tmp / "pp3.png"),
        ("no subcommand", [], None),
        ("unknown subcommand", ["zip"], None),
    ]
    # IDX data with the wrong shapes (Fashion-MNIST's file names)
    for name, imgs, labels in (("labels 2-D", np.zeros((20, 28, 28)), np.zeros((20, 2))),
                               ("images 5x5", np.zeros((20, 5, 5)), np.zeros(20)),
                               ("no images", np.zeros((0, 28, 28)), np.zeros(0)),
                               ("labels out of range", np.zeros((20, 28, 28)), np.full(20, 200)),
                               ("counts differ", np.zeros((20, 28, 28)), np.zeros(7))):
        d = tmp / "idx" / name.replace(" ", "-")
        d.mkdir(parents=True)
        for split in ("train", "t10k"):
            write_idx(d / f"{split}-images-idx3-ubyte.gz", imgs)
            write_idx(d / f"{split}-labels-idx1-ubyte.gz", labels)
        o = out()
        cases.append((f"run --data-dir ({name})", ["run", "--dataset", "fmnist", "--clients", "3", "--rounds", "1",
                                                    "--data-dir", str(d), "--out", str(o)], o))
    return cases


def setup(tmp: Path) -> None:
    """A good finished run (with a checkpoint) and damaged copies of it."""
    good = tmp / "good"
    subprocess.run([sys.executable, "-m", "e3sfc.cli", "run", *TINY, "--rounds", "2", "--checkpoint-every", "1",
                    "--out", str(good)], check=True, capture_output=True)
    (tmp / "empty").mkdir()
    (tmp / "plots").mkdir()

    def damaged(name: str, edit) -> None:  # two copies: --resume may repair what it may (summary.json)
        for d in (tmp / name, tmp / f"resume-{name}"):
            shutil.copytree(good, d)
            edit(d)

    def flip(p: Path) -> None:
        b = bytearray(p.read_bytes())
        b[len(b) // 2] ^= 0x10
        p.write_bytes(bytes(b))

    damaged("ckpt-truncated", lambda d: (d / "checkpoint.pt").write_bytes((d / "checkpoint.pt").read_bytes()[:999]))
    damaged("ckpt-flipped", lambda d: flip(d / "checkpoint.pt"))
    damaged("ckpt-junk", lambda d: (d / "checkpoint.pt").write_bytes(os.urandom(4096)))
    damaged("ckpt-empty", lambda d: (d / "checkpoint.pt").write_bytes(b""))
    damaged("metrics-junk", lambda d: (d / "metrics.jsonl").write_text((d / "metrics.jsonl").read_text() + "{junk\n"))
    damaged("ledger-junk", lambda d: (d / "ledger.jsonl").write_text("[1, 2\n"))
    damaged("config-junk", lambda d: (d / "config.json").write_bytes(b"\xff\xfe{"))
    damaged("summary-junk", lambda d: (d / "summary.json").write_text('{"rounds": "x"'))
    damaged("config-missing", lambda d: (d / "config.json").unlink())
    damaged("metrics-nan", lambda d: (d / "metrics.jsonl").write_text(
        "\n".join(json.dumps({**json.loads(ln), "accuracy": float("nan")}) if i == 0 else ln
                  for i, ln in enumerate((d / "metrics.jsonl").read_text().splitlines())) + "\n"))


def judge(case: tuple[str, list[str], Path | None], limit: float) -> dict:
    what, argv, must_not_exist = case
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-m", "e3sfc.cli", *argv], capture_output=True, text=True,
                           timeout=limit, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"what": what, "verdict": "hang", "rc": None, "line": f"still running after {limit:.0f} s"}
    lines = [ln for ln in p.stderr.strip().splitlines() if ln and not ln.startswith(("WARNING", "INFO"))]
    res = {"what": what, "rc": p.returncode, "seconds": round(time.perf_counter() - t0, 1),
           "line": lines[-1][:200] if lines else ""}
    if "Traceback" in p.stderr:
        res["verdict"] = "traceback"
    elif p.returncode == 0:
        res["verdict"] = "accepted"
    elif p.returncode in (1, 2) and len(lines) == 1 and lines[0].startswith("e3sfc"):
        left = must_not_exist is not None and p.returncode == 2 and must_not_exist.exists()
        res["verdict"] = "left a file" if left else "refused"
    elif p.returncode == 2 and not argv:
        res["verdict"] = "refused"  # no subcommand: the usage, exit 2
    else:
        res["verdict"] = "other"
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--time-limit", type=float, default=300.0, help="seconds before a case counts as a hang")
    ap.add_argument("--only", default="", help="only the cases whose description holds this text (no section written)")
    a = ap.parse_args()
    t0 = time.time()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        setup(tmp)
        cases = [c for c in make_cases(tmp) if a.only in c[0]]
        with ThreadPoolExecutor(a.jobs) as pool:
            results = list(pool.map(lambda c: judge(c, a.time_limit), cases))
    counts: dict[str, int] = {}
    for r in results:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    bad = [r for r in results if r["verdict"] not in ("refused", "accepted")]
    accepted = [r for r in results if r["verdict"] == "accepted"]
    groups: dict[str, list[int]] = {}  # subcommand -> [cases, refused, accepted]
    for c, r in zip(cases, results):
        g = groups.setdefault(c[1][0] if c[1] else "(none)", [0, 0, 0])
        g[0] += 1
        g[1] += r["verdict"] == "refused"
        g[2] += r["verdict"] == "accepted"
    lines = ["| subcommand | cases | refused (one line, exit 2 or 1) | accepted (exit 0) |", "|---|---|---|---|"]
    lines += [f"| {g} | {c} | {rf} | {ac} |" for g, (c, rf, ac) in sorted(groups.items())]
    body = (
        f"{len(results)} bad command lines across every subcommand, each in its own process "
        f"(`python -m e3sfc.cli ...`, a {a.time_limit:.0f} s limit). Verdicts: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + f". Whole census: {time.time() - t0:.0f} s.\n\n"
        + "\n".join(lines) + "\n\n"
        + ("No traceback, no hang, no other exit code, no second line and no file left behind by a refusal.\n\n"
           if not bad else "Failures of the rule:\n\n" + "\n".join(
               f"- {r['what']}: {r['verdict']} (exit {r['rc']}): {r['line']}" for r in bad) + "\n\n")
        + "Accepted (exit 0: the value is legal, the tiny run ran; each a person should find right):\n\n"
        + "\n".join(f"- {r['what']}" for r in accepted) + "\n"
    )
    if not a.only:
        write_section("Bad-input census (issue 32)", body)
    if not a.only:
        Path(__file__).with_name("logs").joinpath("bad_input.json").write_text(json.dumps(results, indent=1) + "\n")
    print(body)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
