"""Seconds per round and peak resident memory for 10, 100 and 1,000 clients.

Each configuration runs in its own process (so its peak RSS is its own):
MLP on Fashion-MNIST, Dirichlet 1.0, all clients at 10 clients and 10% participation at
100 and 1,000 clients, for fedavg, 3sfc and e3sfc.
Memory grows as clients first take part (each keeps its EF residual, and under
E-3SFC its replica), so the table also says how many clients held state when
the peak was read. ``--steady N`` instead runs N clients at 10% until every
client holds its state (the steady state; at most ``--max-rounds``) and reports
the peak then.

    python benchmarks/scale.py --rounds 3
    python benchmarks/scale.py --steady 1000 --methods 3sfc,e3sfc
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def child(method: str, clients: int, fraction: float, rounds: int, until_all: bool = False) -> None:
    import torch

    from e3sfc.config import RunConfig
    from e3sfc.federated import Simulation

    torch.set_num_threads(1)
    sim = Simulation(RunConfig(method=method, dataset="fmnist", model="mlp", clients=clients, fraction=fraction,
                               rounds=rounds, eval_every=10_000, threads=1))
    times = []

    def holding() -> int:
        return sum(1 for c in sim.clients.values() if c.ef.residuals or c.replica is not None)

    for t in range(1, rounds + 1):
        t0 = time.perf_counter()
        sim.run_round(t)
        times.append(time.perf_counter() - t0)
        if until_all and holding() == clients:
            break
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"s_round": sum(times[1:]) / max(1, len(times) - 1), "peak_mb": rss_mb, "holding": holding(),
                      "rounds": len(times)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--methods", default="fedavg,3sfc,e3sfc")
    ap.add_argument("--clients", default="10,100,1000")
    ap.add_argument("--steady", type=int, default=0, help="clients for a steady-state run (0: the scale table)")
    ap.add_argument("--max-rounds", type=int, default=200)
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        m, k, f, r, u = args.child
        child(m, int(k), float(f), int(r), u == "1")
        return
    from _common import write_section

    if args.steady:
        steady(args)
        return

    lines = ["| clients | participants / round | method | s / round | peak RSS MB | clients holding state |",
             "|---|---|---|---|---|---|"]
    for k in (int(c) for c in args.clients.split(",")):
        frac = 1.0 if k <= 10 else 0.1
        for m in args.methods.split(","):
            out = subprocess.run([sys.executable, __file__, "--child", m, str(k), str(frac), str(args.rounds), "0"],
                                 capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            r = json.loads(out)
            lines.append(f"| {k:,} | {round(frac * k)} | {m} | {r['s_round']:.2f} | {r['peak_mb']:,.0f} "
                         f"| {r['holding']} |")
            print(lines[-1], flush=True)
    write_section("Scale: clients, seconds per round, peak memory (MLP, Fashion-MNIST)", "\n".join(lines) +
                  f"\n\n{args.rounds} rounds per configuration; s/round leaves out round 1.")


def steady(args) -> None:
    from _common import write_section

    k = args.steady
    lines = ["| clients | participants / round | method | rounds until all hold state | s / round | peak RSS MB "
             "| clients holding state |", "|---|---|---|---|---|---|---|"]
    for m in args.methods.split(","):
        out = subprocess.run([sys.executable, __file__, "--child", m, str(k), "0.1", str(args.max_rounds), "1"],
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        lines.append(f"| {k:,} | {round(0.1 * k)} | {m} | {r['rounds']} | {r['s_round']:.2f} | {r['peak_mb']:,.0f} "
                     f"| {r['holding']:,} |")
        print(lines[-1], flush=True)
    write_section(f"Steady state: {k:,} clients at 10% (MLP, Fashion-MNIST)", "\n".join(lines) +
                  "\n\nRounds run until every client has taken part and holds its state; the peak is read then. "
                  "Target (1,000 clients, 3SFC): under 2 GB.")


if __name__ == "__main__":
    main()
