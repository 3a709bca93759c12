"""Seconds per round and peak resident memory for 10, 100 and 1,000 clients.

Each configuration runs in its own process (so its peak RSS is its own):
MLP on Fashion-MNIST, Dirichlet 1.0, all clients at 10 clients and 10% participation at
100 and 1,000 clients, for fedavg, 3sfc and e3sfc.
Memory grows as clients first take part (each keeps its EF residual, and under
E-3SFC its replica), so the table also says how many clients held state when
the peak was read.

    python benchmarks/scale.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def child(method: str, clients: int, fraction: float, rounds: int) -> None:
    import torch

    from e3sfc.config import RunConfig
    from e3sfc.federated import Simulation

    torch.set_num_threads(1)
    sim = Simulation(RunConfig(method=method, dataset="fmnist", model="mlp", clients=clients, fraction=fraction,
                               rounds=rounds, eval_every=10_000, threads=1))
    times = []
    for t in range(1, rounds + 1):
        t0 = time.perf_counter()
        sim.run_round(t)
        times.append(time.perf_counter() - t0)
    holding = sum(1 for c in sim.clients.values() if c.ef.residuals or c.replica is not None)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"s_round": sum(times[1:]) / max(1, len(times) - 1), "peak_mb": rss_mb, "holding": holding}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--methods", default="fedavg,3sfc,e3sfc")
    ap.add_argument("--clients", default="10,100,1000")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        m, k, f, r = args.child
        child(m, int(k), float(f), int(r))
        return
    from _common import write_section

    lines = ["| clients | participants / round | method | s / round | peak RSS MB | clients holding state |",
             "|---|---|---|---|---|---|"]
    for k in (int(c) for c in args.clients.split(",")):
        frac = 1.0 if k <= 10 else 0.1
        for m in args.methods.split(","):
            out = subprocess.run([sys.executable, __file__, "--child", m, str(k), str(frac), str(args.rounds)],
                                 capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            r = json.loads(out)
            lines.append(f"| {k:,} | {round(frac * k)} | {m} | {r['s_round']:.2f} | {r['peak_mb']:,.0f} "
                         f"| {r['holding']} |")
            print(lines[-1], flush=True)
    write_section("Scale: clients, seconds per round, peak memory (MLP, Fashion-MNIST)", "\n".join(lines) +
                  f"\n\n{args.rounds} rounds per configuration; s/round leaves out round 1.")


if __name__ == "__main__":
    main()
