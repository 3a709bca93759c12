"""Seconds per round of each method in the reference setting, measured in one run.

Reference setting: Fashion-MNIST, MLP, 10 clients, Dirichlet 1.0, 1 local epoch,
batch 64, lr 0.01, seed 42. Evaluation is left out of the timing. Ratios against
FedAvg come from the same run, so they are comparable across machines.

    python benchmarks/round_time.py --methods fedavg,3sfc,3sfc@patience=0 --rounds 5 --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch

from _common import write_section
from e3sfc.config import RunConfig
from e3sfc.federated import Simulation


def parse_method(spec: str) -> tuple[str, dict]:
    """``3sfc`` or ``3sfc@patience=0@steps=5``: a method and RunConfig overrides (ints or floats)."""
    name, *opts = spec.split("@")
    extra = {}
    for o in opts:
        k, v = o.split("=", 1)
        extra[k.replace("-", "_")] = float(v) if "." in v else int(v)
    return name, extra


def time_method(method: str, extra: dict, rounds: int) -> dict:
    cfg = RunConfig(method=method, dataset="fmnist", model="mlp", clients=10, alpha=1.0,
                    rounds=rounds + 1, local_epochs=1, batch_size=64, lr=0.01, seed=42,
                    eval_every=10_000, **extra)
    sim = Simulation(cfg)
    sim.run_round(1)  # warm-up
    times, comp = [], []
    for t in range(2, rounds + 2):
        t0 = time.perf_counter()
        stats = sim.run_round(t)
        times.append(time.perf_counter() - t0)
        comp.append(stats["compress_seconds"])
    up = sim.ledger.round_bytes(2, "up") / 10
    label = "@".join([method, *(f"{k}={v}" for k, v in extra.items())])
    return {"method": label, "s_round": sum(times) / len(times), "s_compress": sum(comp) / len(comp),
            "up_bytes": up, "extra": extra}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="fedavg")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per method (after one warm-up)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--title", default="Seconds per round, reference setting",
                    help="section of benchmarks/RESULTS.md to write (replaced if it exists)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = [time_method(*parse_method(m), args.rounds) for m in args.methods.split(",")]
    base = next((r["s_round"] for r in rows if r["method"] == "fedavg"), None)
    lines = ["| method | s / round | x FedAvg | compress s / round (all clients) | uplink B / client-round |",
             "|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['s_round'] / base:.2f}" if base else "-"
        lines.append(f"| {r['method']} | {r['s_round']:.3f} | {ratio} | {r['s_compress']:.3f} | {r['up_bytes']:,.0f} |")
    table = "\n".join(lines)
    print(table)
    note = "Authors' code on this machine (from the issue): FedAvg 1.45 s/round, 3SFC 8.26 s/round (one thread)."
    write_section(args.title, table + "\n\n" + note)


if __name__ == "__main__":
    main()
