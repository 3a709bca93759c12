"""Fault injection: what one hostile client of ten does to a run, for each method and kind.

Reference setting (Fashion-MNIST, MLP, 10 clients, Dirichlet 1.0, batch 64, lr 0.01,
seed 42) for ``--rounds`` rounds (default 30): for each method a clean run and one run per
``--adversary`` kind with ``--adversaries 1``, all with the default defences (payload
checks and ``--norm-clip 3``); plus runs with ``--norm-clip 0`` for the kinds the clip
is there for (``scale``, ``huge``) to show what it buys. Top-k and STC run at 3SFC's
uplink bytes (``--ratio match:3sfc``). Each run is ``e3sfc run`` in its own process,
into ``runs/adversary/NAME`` (a finished run is not run again, so the script resumes).
Writes the table as the section "Fault injection" of benchmarks/RESULTS.md.

    python benchmarks/adversary.py [--rounds 30] [--methods fedavg,3sfc,e3sfc,topk,stc]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from _common import write_section

KINDS = ("nan", "huge", "scale", "garbage", "wrong-shape", "drop")
UNCLIPPED = ("scale", "huge")


def run(name: str, args: list[str], root: Path) -> list[dict]:
    out = root / name
    if not (out / "summary.json").is_file():
        if out.exists():
            import shutil
            shutil.rmtree(out)
        cmd = [sys.executable, "-m", "e3sfc.cli", "run", "--out", str(out), *args]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def last10(rows: list[dict]) -> float:
    tail = [r["accuracy"] for r in rows[-10:]]
    return sum(tail) / len(tail)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--methods", default="fedavg,3sfc,e3sfc,topk,stc")
    ap.add_argument("--root", default="runs/adversary")
    a = ap.parse_args()
    root = Path(a.root)
    methods = a.methods.split(",")
    base = ["--dataset", "fmnist", "--model", "mlp", "--clients", "10", "--alpha", "1.0", "--rounds", str(a.rounds),
            "--batch-size", "64", "--lr", "0.01", "--seed", "42", "--threads", "1"]
    head = "| method | clean | " + " | ".join(KINDS) + " | " + " | ".join(f"{k}, no clip" for k in UNCLIPPED) + " |"
    lines = [head, "|" + "---|" * (2 + len(KINDS) + len(UNCLIPPED))]
    worst = []
    for m in methods:
        margs = base + ["--method", m] + (["--ratio", "match:3sfc"] if m in ("topk", "stc") else [])
        clean = last10(run(f"{m}-clean", margs, root))
        cells = [f"{clean:.4f}"]
        for kind, clip in [(k, None) for k in KINDS] + [(k, "0") for k in UNCLIPPED]:
            extra = ["--adversary", kind, "--adversaries", "1"] + (["--norm-clip", clip] if clip else [])
            rows = run(f"{m}-{kind}" + ("-noclip" if clip else ""), margs + extra, root)
            acc = last10(rows)
            rej = sum(r.get("rejected") or 0 for r in rows)
            clipped = sum(r.get("clipped") or 0 for r in rows)
            miss = sum(r.get("missing") or 0 for r in rows)
            d = 100 * (acc - clean)
            flag = " **(> 3 points)**" if d < -3 else ""
            if clip is None and d < -3:
                worst.append(f"{m}/{kind} ({d:+.1f})")
            note = ", ".join(s for s in (f"{rej} rejected" if rej else "", f"{clipped} clipped" if clipped else "",
                                         f"{miss} missing" if miss else "") if s)
            cells.append(f"{acc:.4f} ({d:+.1f}){flag}" + (f"<br>{note}" if note else ""))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    body = (
        f"Mean test accuracy over the last 10 of {a.rounds} rounds, 1 of 10 clients hostile (the same seeded "
        "client in every run), reference setting, seed 42, one thread per run. In brackets: points against the "
        "clean run; below: how many updates the server rejected, scaled down (robust aggregation) or never got, "
        "summed over the run. The last columns turn robust aggregation off (`--norm-clip 0`).\n\n"
        + "\n".join(lines) + "\n\n"
        + ("Every defended run is within 3 points of its clean run." if not worst else
           "Beyond 3 points with the defences on: " + ", ".join(worst) + ".")
    )
    write_section("Fault injection (issue 14)", body)
    print(body)


if __name__ == "__main__":
    main()
