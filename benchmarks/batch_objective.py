"""Milliseconds per client for one evaluation of the 3SFC objective: each client alone against a
round's clients batched (what ``--batch-search`` does), per model.

The MLP uses the closed form (``MLPCosineMatch`` / ``MLPCosineMatchBatch``); every other model the
autograd form (``CosineMatch`` / ``CosineMatchBatch``, torch.func vmap of grad and one vjp). The
cost of an evaluation does not depend on the values, so targets and points are random; M = 1,
float32, at the model's usual input shape. Each figure is the best of ``--repeats`` timings.

    python benchmarks/batch_objective.py --clients 10 --repeats 3 --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch

from _common import write_section
from e3sfc.compress.search import cosine_match
from e3sfc.compress.synth import CosineMatchBatch
from e3sfc.compress.synth_mlp import MLPCosineMatch, MLPCosineMatchBatch
from e3sfc.models import build_model

MODELS = {"mlp": (1, 28, 28), "convnet": (1, 28, 28), "convnet-fast": (1, 28, 28), "lenet": (1, 28, 28),
          "mnistnet": (1, 28, 28),
          "regnet": (3, 32, 32), "vgg11": (3, 32, 32), "resnet18": (3, 32, 32)}


def best_of(repeats: int, fn) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=10, help="objectives evaluated together (a round's participants)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    B = args.clients
    lines = ["| model | parameters | objective | alone ms / client | batched ms / client | speed-up |",
             "|---|---|---|---|---|---|"]
    for name in args.models.split(","):
        shape = MODELS[name]
        gen = torch.Generator().manual_seed(0)
        model = build_model(name, shape, 10, seed=0).to(args.device).eval()
        P = sum(p.numel() for p in model.parameters())
        fs = [cosine_match(model, torch.randn(P, generator=gen).to(args.device), (1, *shape), (1, 10))
              for _ in range(B)]
        zs = [torch.randn(torch.Size(shape).numel() + 10, generator=gen).to(args.device)
              for _ in range(B)]
        batch = (MLPCosineMatchBatch if isinstance(fs[0], MLPCosineMatch) else CosineMatchBatch)(fs)
        sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

        def alone():
            for f, z in zip(fs, zs):
                f(z)
            sync()

        def together():
            batch(zs)
            sync()

        alone(), together()  # warm-up (torch.func traces its transforms on first use)
        t_alone, t_batch = best_of(args.repeats, alone), best_of(args.repeats, together)
        lines.append(f"| {name} | {P:,} | {type(fs[0]).__name__} | {1000 * t_alone / B:.2f} | "
                     f"{1000 * t_batch / B:.2f} | {t_alone / t_batch:.2f}x |")
        print(lines[-1], flush=True)
    write_section(f"3SFC objective, {B} clients alone vs batched ({args.device})", "\n".join(lines))


if __name__ == "__main__":
    main()
