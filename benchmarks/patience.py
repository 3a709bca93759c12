"""3SFC early stop: mean best cosine and cost of the encoder search for several ``patience`` values,
on the targets of one more round of finished runs (late-training targets, the hard ones).

Each RUN_DIR (a finished run with a checkpoint, e.g. runs/reference/3sfc-reference-lbfgs) is
copied to a temporary folder, resumed there and run for one more round, recording every
client's EF target and the global weights it was taken at; then the same targets are searched
from the same starting points with each patience (0 = all evaluations, the reference).

    python benchmarks/patience.py runs/reference/3sfc-reference-lbfgs runs/seeds/3sfc-reference-lbfgs-seed43
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from _common import captured_targets, count_objective_evaluations, write_section
from e3sfc.compress.base import Context
from e3sfc.compress.threesfc import ThreeSFC
from e3sfc.federated import Simulation
from e3sfc.federated.params import set_flat


def late_targets(run_dirs: list[str]):
    """The 3SFC targets of one more round of each run (resumed from a copy, the run left as it is)."""
    sim = None
    with captured_targets() as targets:
        for src in run_dirs:
            with tempfile.TemporaryDirectory() as tmp:
                shutil.copytree(src, Path(tmp) / "run")
                sim = Simulation.resume(Path(tmp) / "run")
                sim.run_round(sim.cfg.rounds + 1)
    return targets, sim


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--patience", default="10,20,30,0")
    args = ap.parse_args()
    torch.set_num_threads(1)
    targets, sim = late_targets(args.runs)
    model, shape = sim.client_model, tuple(sim.data.input_shape)
    n = count_objective_evaluations()
    lines = ["| patience | mean best cos | evaluations / client | ms / client |", "|---|---|---|---|"]
    for pat in (int(p) for p in args.patience.split(",")):
        comp, cos, n["evals"] = ThreeSFC(samples=1, steps=10, patience=pat), [], 0
        t0 = time.perf_counter()
        for tau, w, r, c in targets:
            set_flat(model, w)
            ctx = Context(model, w, shape, sim.data.num_classes, round=r, client=c,
                          generator=torch.Generator().manual_seed(r * 100 + c))
            cos.append(comp.synthesize(tau, ctx)[2])
        ms = (time.perf_counter() - t0) / len(targets) * 1e3
        lines.append(f"| {pat if pat else '0 (all evaluations)'} | {sum(cos) / len(cos):.4f} "
                     f"| {n['evals'] / len(targets):.1f} | {ms:.1f} |")
    table = "\n".join(lines)
    print(table)
    write_section("3SFC early stop: patience against search quality (late-training targets)", table +
                  f"\n\n{len(targets)} targets: one more round of {', '.join(args.runs)} (M = 1, steps 10).")


if __name__ == "__main__":
    main()
