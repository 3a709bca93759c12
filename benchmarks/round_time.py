"""Seconds per round of each method in the reference setting, measured in one run.

Reference setting: Fashion-MNIST, MLP, 10 clients, Dirichlet 1.0, 1 local epoch,
batch 64, lr 0.01, seed 42. Evaluation is left out of the timing. Ratios against
FedAvg come from the same run, so they are comparable across machines; the methods
run interleaved round by round, so a slow spell of the machine hits them alike.

    python benchmarks/round_time.py --methods fedavg,3sfc,3sfc@patience=0 --rounds 5 --threads 1
    python benchmarks/round_time.py --model convnet-fast --methods fedavg,3sfc,3sfc@batch_search=1 --rounds 3
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


def time_methods(specs: list[tuple[str, dict]], rounds: int, model: str = "mlp") -> list[dict]:
    """All methods side by side, interleaved round by round (round t of every method, then round
    t + 1), so that slow spells of the machine hit every method alike."""
    sims = []
    for method, extra in specs:
        cfg = RunConfig(method=method, dataset="fmnist", model=model, clients=10, alpha=1.0,
                        rounds=rounds + 1, local_epochs=1, batch_size=64, lr=0.01, seed=42,
                        eval_every=10_000, **extra)
        sim = Simulation(cfg)
        sim.run_round(1)  # warm-up
        sims.append(sim)
    times = [[] for _ in sims]
    comp = [[] for _ in sims]
    for t in range(2, rounds + 2):
        for i, sim in enumerate(sims):
            t0 = time.perf_counter()
            stats = sim.run_round(t)
            times[i].append(time.perf_counter() - t0)
            comp[i].append(stats["compress_seconds"])
    out = []
    for (method, extra), sim, ts, cs in zip(specs, sims, times, comp):
        label = "@".join([method, *(f"{k}={v}" for k, v in extra.items())])
        out.append({"method": label, "s_round": sum(ts) / len(ts), "s_compress": sum(cs) / len(cs),
                    "up_bytes": sim.ledger.round_bytes(2, "up") / 10, "extra": extra})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="fedavg")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per method (after one warm-up)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default="mlp", help="model of the otherwise reference setting")
    ap.add_argument("--title", default="Seconds per round, reference setting",
                    help="section of benchmarks/RESULTS.md to write (replaced if it exists)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = time_methods([parse_method(m) for m in args.methods.split(",")], args.rounds, args.model)
    base = next((r["s_round"] for r in rows if r["method"] == "fedavg"), None)
    lines = ["| method | s / round | x FedAvg | compress s / round (all clients) | uplink B / client-round |",
             "|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['s_round'] / base:.2f}" if base else "-"
        lines.append(f"| {r['method']} | {r['s_round']:.3f} | {ratio} | {r['s_compress']:.3f} | {r['up_bytes']:,.0f} |")
    table = "\n".join(lines)
    print(table)
    note = ("Authors' code on this machine (from the issue, MLP): FedAvg 1.45 s/round, 3SFC 8.26 s/round (one thread)."
            if args.model == "mlp" else f"Model: {args.model}.")
    write_section(args.title, table + "\n\n" + note)


if __name__ == "__main__":
    main()
