"""Behaviour snapshot: run a fixed set of short configurations and hash what they produce.

Used around refactors that must not change any number: ``record`` writes the hashes of each
configuration's metrics (timings left out), final weights, ledger and summary; ``check`` runs
them again and lists every configuration whose hashes differ. The hashes hold on one kind of
machine and one torch build (floating point is not the same everywhere), so the file is a lab
record, not a test fixture.

    python scripts/snapshot.py record benchmarks/logs/snapshot.json
    python scripts/snapshot.py check benchmarks/logs/snapshot.json
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time

import torch

from e3sfc.config import RunConfig
from e3sfc.federated.simulator import Simulation

BASE = dict(dataset="digits", model="mlp", clients=6, rounds=4, batch_size=32, lr=0.05, seed=3, threads=1)
S3 = dict(samples=2, steps=2, max_iter=5)
CASES: dict[str, dict] = {
    "fedavg": dict(method="fedavg"),
    "fedavg-partial-weighted": dict(method="fedavg", fraction=0.5, weighted=True),
    "3sfc": dict(method="3sfc", **S3),
    "3sfc-batch": dict(method="3sfc", batch_search=True, **S3),
    "3sfc-nobatch-8bit": dict(method="3sfc", batch_search=False, feature_bits=8, **S3),
    "3sfc-tensor-scales-warm": dict(method="3sfc", scales="tensor", warm_start=True, **S3),
    "e3sfc": dict(method="e3sfc", **S3),
    "e3sfc-partial": dict(method="e3sfc", fraction=0.5, **S3),
    "e3sfc-budget-adaptive": dict(method="e3sfc", schedule="adaptive", budget_bytes=200_000, max_samples=6, **S3),
    "e3sfc-decay": dict(method="e3sfc", schedule="decay", budget_bytes=150_000, max_samples=6, **S3),
    "topk": dict(method="topk", ratio="0.05"),
    "topk-match-3sfc-down-topk": dict(method="topk", ratio="match:3sfc", downlink="topk", **S3),
    "stc-partial-down-stc": dict(method="stc", ratio="0.05", fraction=0.5, downlink="stc"),
    "sign": dict(method="sign"),
    "qsgd": dict(method="qsgd", levels=8),
    "fedsynth": dict(method="fedsynth", samples=2, unroll=1, synth_iters=5),
    "3sfc-down-3sfc-seed": dict(method="3sfc", downlink="3sfc", init="seed", fraction=0.5, **S3),
    "authors-3sfc": dict(method="3sfc", protocol="authors", **S3),
    "fedavg-adversary-scale": dict(method="fedavg", adversary="scale", adversaries=1),
    "3sfc-adversary-nan": dict(method="3sfc", adversary="nan", adversaries=2, **S3),
    "3sfc-noef": dict(method="3sfc", ef=False, **S3),
}
VOLATILE = ("seconds", "compress_seconds", "train_seconds", "wall_seconds", "seconds_per_round")


def _h(obj) -> str:
    if isinstance(obj, torch.Tensor):
        return hashlib.sha256(obj.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _clean(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in VOLATILE}


def run_case(settings: dict) -> dict:
    torch.set_num_threads(1)
    cfg = RunConfig(**{**BASE, **settings})
    with tempfile.TemporaryDirectory() as d:
        sim = Simulation(cfg, out_dir=d)
        summary = sim.run()
        return {"metrics": _h([_clean(r) for r in sim.metrics]), "weights": _h(sim.weights),
                "ledger": _h(list(sim.ledger.rows())), "summary": _h(_clean(summary)),
                "accuracy": sim.metrics[-1]["accuracy"]}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("record", "check"):
        print(__doc__)
        return 2
    mode, path = argv
    got = {}
    for name, settings in CASES.items():
        t0 = time.perf_counter()
        got[name] = run_case(settings)
        print(f"{name:32s} acc {got[name]['accuracy']:.4f}  {time.perf_counter() - t0:5.1f} s", flush=True)
    if mode == "record":
        with open(path, "w") as f:
            json.dump(got, f, indent=1, sort_keys=True)
        return 0
    with open(path) as f:
        want = json.load(f)
    bad = [n for n in CASES if want.get(n) != got[n]]
    for n in bad:
        diff = [k for k in got[n] if want.get(n, {}).get(k) != got[n][k]]
        print(f"DIFFERS: {n}: {', '.join(diff)}")
    print(f"{len(CASES) - len(bad)} of {len(CASES)} configurations identical")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
