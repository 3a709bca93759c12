"""Client state beyond memory: many MLP clients at 1% participation under ``--state-memory``.

Two runs of the same configuration (3SFC, MLP, Fashion-MNIST, IID split (a Dirichlet draw leaves
some of 10,000 clients empty), ``--clients`` clients,
1% of them a round, the same participants in both), each in its own process so that its peak
RSS is its own:
- ``idle clients hold state``: before round 1 every client gets a model-sized error-feedback
  residual (random numbers, as if it had trained before; the store spills them as they come),
  so the rounds run with every idle client's state on disk;
- ``no idle state``: the rounds run from a fresh start (only the round's participants hold state).
Per run: seconds per round (mean of rounds 2..), spills and reloads, peak RSS, the spill files'
size on disk, and the seconds the pre-fill took.

    python benchmarks/state_store.py --clients 10000 --state-memory 512 --rounds 4
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(clients: int, rounds: int, state_memory: float, prefill: bool) -> None:
    import torch

    from e3sfc.config import RunConfig
    from e3sfc.federated import Simulation

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="e3sfc-state-") as tmp:
        cfg = RunConfig(method="3sfc", dataset="fmnist", model="mlp", clients=clients, fraction=0.01, partition="iid",
                        rounds=rounds + 1, eval_every=10_000, threads=1, state_memory=state_memory)
        sim = Simulation(cfg, out_dir=tmp)
        t0 = time.perf_counter()
        if prefill:
            g = torch.Generator().manual_seed(0)
            for k in range(clients):
                c = sim.client(k)
                c.ef.residuals = {k: torch.randn(sim.num_params, generator=g) * 1e-3}
                if k % 100 == 99:
                    sim.store.settle()
            sim.store.settle()
        fill = time.perf_counter() - t0
        times = []
        for t in range(1, rounds + 1):
            t0 = time.perf_counter()
            sim.run_round(t)
            times.append(time.perf_counter() - t0)
        disk = sum(p.stat().st_size for p in Path(tmp, "spill").glob("*.f32")) if Path(tmp, "spill").is_dir() else 0
        print(json.dumps({"s_round": sum(times[1:]) / max(1, len(times) - 1), "fill_s": fill,
                          "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                          "holding": len(sim.store), "in_memory": len(sim.store.live), "disk_mb": disk / 2 ** 20,
                          "spills": sim.store.spills, "loads": sim.store.loads}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--state-memory", type=float, default=512.0, help="MB of client tensors kept in memory")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        k, r, m, p = args.child
        child(int(k), int(r), float(m), p == "1")
        return
    from _common import write_section

    lines = ["| clients | participants / round | --state-memory MB | idle clients | s / round | peak RSS MB | "
             "clients holding state (in memory) | spill files MB | spills / reloads | pre-fill s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for prefill in (True, False):
        out = subprocess.run([sys.executable, __file__, "--child", str(args.clients), str(args.rounds),
                              str(args.state_memory), "1" if prefill else "0"],
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        lines.append(f"| {args.clients:,} | {round(0.01 * args.clients)} | {args.state_memory:g} | "
                     f"{'hold state' if prefill else 'no idle state'} | {r['s_round']:.2f} | {r['peak_mb']:,.0f} | "
                     f"{r['holding']:,} ({r['in_memory']:,}) | {r['disk_mb']:,.0f} | {r['spills']:,} / {r['loads']:,} "
                     f"| {r['fill_s']:.0f} |")
        print(lines[-1], flush=True)
    write_section(f"State store: {args.clients:,} clients at 1% with --state-memory {args.state_memory:g}",
                  "\n".join(lines) + f"\n\n{args.rounds} rounds per run; s / round leaves out round 1.")


if __name__ == "__main__":
    main()
