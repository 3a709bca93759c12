"""Text at AG News scale: is a 3SFC round on ``textbag`` dominated by the V-sized synthetic input?

One client with an AG News-sized shard (12,000 documents of 40 random tokens, 4 classes; a tenth of
AG News's 120,000) on a vocabulary of V = 98,635 (AG News's under the basic_english tokenizer):
seconds for its local training (1 epoch, batch 64: the FedAvg round of one client) and for its 3SFC
compression at the defaults (M = 1, early stop) and with 8-bit features (M = 4), in one process.

    python benchmarks/text_search.py [--model textbag|transformer] [--vocab 98635] [--docs 12000] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from e3sfc.compress import make_compressor
from e3sfc.compress.base import Context
from e3sfc.federated import get_flat, local_train
from e3sfc.models import build_model, num_params, synthetic_shape


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="textbag")
    ap.add_argument("--vocab", type=int, default=98_635)
    ap.add_argument("--docs", type=int, default=12_000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(2, a.vocab, (a.docs, 40), generator=g)
    y = torch.randint(0, 4, (a.docs,), generator=g)
    model = build_model(a.model, (40,), 4, seed=0, vocab_size=a.vocab)
    w0 = get_flat(model)
    shape = synthetic_shape(model, (40,))
    train = build_model(a.model, (40,), 4, seed=0, vocab_size=a.vocab)
    t0 = time.perf_counter()
    delta = local_train(train, w0, x, y, epochs=1, batch_size=64, lr=0.5, generator=torch.Generator().manual_seed(1))
    t_train = time.perf_counter() - t0
    model.eval()
    print(f"{a.model}: V = {a.vocab:,}, {num_params(model):,} parameters, synthetic sample {shape}, "
          f"{a.threads} thread(s)")
    print("| step | seconds | x local training | payload bytes | cosine |\n|---|---|---|---|---|")
    print(f"| local training, {a.docs:,} documents, 1 epoch | {t_train:.2f} | 1.00 | - | - |")
    for label, opts in (("3SFC, M = 1, float32", {}), ("3SFC, M = 4, 8-bit", {"samples": 4, "feature_bits": 8})):
        comp = make_compressor("3sfc", **opts)
        best = None
        for r in range(a.repeats):
            ctx = Context(model, w0, shape, 4, generator=torch.Generator().manual_seed(r))
            t0 = time.perf_counter()
            payload, stats = comp.compress(delta, ctx)
            dt = time.perf_counter() - t0
            best = dt if best is None else min(best, dt)
        print(f"| {label} | {best:.2f} | {best / t_train:.2f} | {comp.payload_bytes(ctx):,} | {stats['cosine']:.3f} |")


if __name__ == "__main__":
    main()
