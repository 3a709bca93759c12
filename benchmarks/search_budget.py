"""How many objective evaluations e3sfc-plus's searches need (issue 34, item 2): the captured cosine of
the payload as sent (8-bit features, the least-squares scale) against the evaluations and time a search
spends, for the L-BFGS history, the patience and the number of steps.

Targets: an e3sfc-plus run (configs/e3sfc-plus.toml: MLP, 10 clients, Dirichlet 1.0, M = 4, 8-bit, both
ways) is run for ``--rounds`` rounds; every 3SFC compression from round ``--from-round`` on records its
target (the clients' EF targets and the server's downlink target) and the weights it was taken at. Each
setting then compresses the same targets from the same starting noise (generator seeded by round and
client), one search at a time, one torch thread. The uplink rows use the clients' targets, the downlink
rows the server's (the published E-3SFC searches the downlink without an early stop: patience 0).

    python benchmarks/search_budget.py --rounds 20 --from-round 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from _common import captured_targets, count_objective_evaluations, write_section
from e3sfc.compress.base import Context
from e3sfc.compress.threesfc import ThreeSFC
from e3sfc.config import RunConfig, load_toml
from e3sfc.federated import Simulation
from e3sfc.federated.params import set_flat


def capture(rounds: int, from_round: int, seed: int):
    toml = load_toml(Path(__file__).resolve().parent.parent / "configs" / "e3sfc-plus.toml")
    cfg = RunConfig(**{**toml, "rounds": rounds, "seed": seed})
    sim = Simulation(cfg)
    with captured_targets(min_round=from_round) as targets:
        for t in range(1, rounds + 1):
            sim.run_round(t)
    return targets, sim


def measure(targets, sim, setting: dict, n: dict) -> tuple[float, float, float]:
    """Mean captured cosine of the sent payload, evaluations and milliseconds a search."""
    model, shape = sim.client_model, tuple(sim.data.input_shape)
    comp = ThreeSFC(samples=4, feature_bits=8, **setting)
    cos, n["evals"] = [], 0
    t0 = time.perf_counter()
    for tau, w, r, c in targets:
        set_flat(model, w)
        ctx = Context(model, w, shape, sim.data.num_classes, round=r, client=c,
                      generator=torch.Generator().manual_seed(r * 1000 + c + 1))
        cos.append(comp.compress(tau, ctx)[1]["cosine"])
    ms = (time.perf_counter() - t0) / len(targets) * 1e3
    return statistics.fmean(cos), n["evals"] / len(targets), ms


SETTINGS = [  # (label, ThreeSFC options); the first of each direction is today's default
    ("default: history 100, patience 20, steps 10", {}),
    ("history 20", {"history": 20}),
    ("history 10", {"history": 10}),
    ("patience 10", {"patience": 10}),
    ("patience 10, history 10", {"patience": 10, "history": 10}),
    ("steps 5 (100 evaluations at most)", {"steps": 5}),
    ("steps 3", {"steps": 3}),
    ("steps 3, history 10", {"steps": 3, "history": 10}),
]
DOWN = [
    ("downlink default: patience 0 (all 200)", {"patience": 0}),
    ("patience 20", {"patience": 20}),
    ("patience 0, steps 5", {"patience": 0, "steps": 5}),
    ("patience 0, steps 3", {"patience": 0, "steps": 3}),
    ("patience 0, history 10", {"patience": 0, "history": 10}),
    ("patience 20, history 10", {"patience": 20, "history": 10}),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--from-round", type=int, default=5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--only", default="", help="comma-separated labels' prefixes to run (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    targets, sim = capture(args.rounds, args.from_round, args.seed)
    up = [t for t in targets if t[3] >= 0]
    down = [t for t in targets if t[3] < 0]
    n = count_objective_evaluations()
    lines = ["| direction | setting | mean captured cos (sent) | evaluations / search | ms / search |",
             "|---|---|---|---|---|"]
    for direction, rows, ts in (("uplink", SETTINGS, up), ("downlink", DOWN, down)):
        for label, setting in rows:
            if args.only and not any(label.startswith(p) for p in args.only.split(",")):
                continue
            cos, evals, ms = measure(ts, sim, setting, n)
            lines.append(f"| {direction} | {label} | {cos:.4f} | {evals:.1f} | {ms:.1f} |")
            print(lines[-1], flush=True)
    table = "\n".join(lines)
    write_section("e3sfc-plus search: captured cosine against evaluations (issue 34)", table +
                  f"\n\n{len(up)} client targets and {len(down)} server targets: rounds {args.from_round}-"
                  f"{args.rounds} of an e3sfc-plus run (seed {args.seed}), M = 4, 8-bit; the cosine is the sent "
                  "payload's (after the 8-bit rounding and the scale).")


if __name__ == "__main__":
    main()
