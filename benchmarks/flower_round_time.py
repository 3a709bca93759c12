"""Seconds per round under Flower's simulation engine (Ray) beside the in-process simulator.

FedAvg-free comparison on E-3SFC, MLP on Fashion-MNIST, for 10 and 100 virtual
clients (one virtual node per client, all sampled each round). The first round
(Ray start-up, data loading in each worker) is excluded by timing rounds 2..R
from each run's metrics.

    python benchmarks/flower_round_time.py --clients 10,100 --rounds 3
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from _common import write_section
from e3sfc.config import RunConfig
from e3sfc.federated import Simulation
from e3sfc.flower import run_flower_simulation
from e3sfc.io import read_jsonl


def per_round(rows: list[dict]) -> float:
    """Mean seconds of rounds 2..R (the ``seconds`` column is cumulative)."""
    return (rows[-1]["seconds"] - rows[0]["seconds"]) / (len(rows) - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", default="10,100")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--method", default="e3sfc")
    args = ap.parse_args()
    torch.set_num_threads(1)
    lines = ["| virtual clients | in-process s / round | Flower (Ray) s / round | ratio |", "|---|---|---|---|"]
    for k in (int(c) for c in args.clients.split(",")):
        cfg = RunConfig(method=args.method, dataset="fmnist", model="mlp", clients=k, alpha=1.0, rounds=args.rounds,
                        threads=1)
        with tempfile.TemporaryDirectory() as tmp:
            Simulation(cfg, out_dir=Path(tmp) / "a").run()
            a = per_round(read_jsonl(Path(tmp) / "a/metrics.jsonl"))
            run_flower_simulation(cfg.replace(engine="flower"), Path(tmp) / "b")
            b = per_round(read_jsonl(Path(tmp) / "b/metrics.jsonl"))
        lines.append(f"| {k} | {a:.2f} | {b:.2f} | {b / a:.2f} |")
        print(lines[-1], flush=True)
    write_section(f"Flower simulation engine against the in-process simulator ({args.method})", "\n".join(lines) +
                  "\n\nRay runs the clients in 2 worker processes (1 CPU each) on this 2-core machine.")


if __name__ == "__main__":
    main()
