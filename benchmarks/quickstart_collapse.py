"""Why 3SFC loses the model in Flower's quickstart (issue 31, lab note to "Flower quickstart through the
add-on"): the quickstart's round, in process, without Flower, round by round.

The quickstart's Net (``quickcnn``) and local training (SGD lr 0.1, momentum 0.9, batch 32, one epoch; the
functions of benchmarks/flower_quickstart.py), 10 IID clients on 12,000 Fashion-MNIST images padded to
3x32x32, FedAvg of the clients' updates with equal weights (equal shares), the global model evaluated on
3,000 test images after every round. Arms: ``dense`` (the updates as they are), ``3sfc`` (the add-on's
default: ``payload_bytes`` 3,215, which picks 8x8 features, M = 15, 8-bit) and ``3sfc-tensor`` (the same
with one scale per parameter tensor), each client with its own error-feedback residual, and ``3sfc-noef``
(the add-on's default without error feedback: each round's fresh update compressed alone). ``--scaling``:
``quickstart`` maps pixels to [-1, 1] as the quickstart's ``Normalize((0.5,) * 3, (0.5,) * 3)`` does;
``standard`` standardizes each channel, as flower_quickstart.py's stand-in does.

Per round and arm: accuracy, the clients' mean compression cosine (decoded against target), the norm of
the aggregate step, the clients' mean target norm (the update plus any residual), and after the last
round the share of each ReLU layer's units that fire on at least one of the test images (a unit: one output
of the layer, for a convolution a channel at one position).

    python benchmarks/quickstart_collapse.py --rounds 8 --seeds 42,43
"""

from __future__ import annotations

import argparse
import statistics

import torch

import flower_quickstart as fq
from _common import write_section
from e3sfc import Context, make_compressor
from e3sfc.data import load_dataset
from e3sfc.data.partition import iid_partition
from e3sfc.federated import get_flat
from e3sfc.federated.params import set_flat

ARMS = {"dense": None, "3sfc": {"payload_bytes": 3215}, "3sfc-tensor": {"payload_bytes": 3215, "scales": "tensor"},
        "3sfc-noef": {"payload_bytes": 3215}}
NO_EF = ("3sfc-noef",)  # arms whose clients keep no residual: each round compresses its fresh update alone
CLIENTS, TEST = 10, 3000


def run(arm: str, seed: int, rounds: int, scaling: str, subset: int) -> list[dict]:
    d = load_dataset("fmnist-rgb32", train_subset=subset, seed=seed,
                     scaling="authors" if scaling == "quickstart" else "standard")

    def scale(x):  # authors' scaling: pixels in [0, 1]; the quickstart's: [-1, 1]
        return x * 2 - 1 if scaling == "quickstart" else x

    train_x, test_x, test_y = scale(d.train_x), scale(d.test_x[:TEST]), d.test_y[:TEST]
    parts = iid_partition(len(d.train_y), CLIENTS, seed)
    w = get_flat(fq.net(seed)).clone()
    comps = [None if ARMS[arm] is None else make_compressor("3sfc", **ARMS[arm]) for _ in range(CLIENTS)]
    resid = [torch.zeros_like(w) for _ in range(CLIENTS)]
    rows = []
    for t in range(1, rounds + 1):
        steps, cos, norms = [], [], []
        for k in range(CLIENTS):
            m = fq.net(seed)
            set_flat(m, w)
            idx = torch.from_numpy(parts[k])
            fq.local_train(m, train_x[idx], d.train_y[idx], 1, 0.1, 32, torch.Generator().manual_seed(1000 * t + k))
            target = get_flat(m) - w + resid[k]
            norms.append(float(target.norm()))
            if comps[k] is None:
                steps.append(target)
                continue
            at = fq.net(seed)
            set_flat(at, w)
            ctx = Context(at, w, fq.INPUT_SHAPE, fq.NUM_CLASSES, round=t, client=k,
                          generator=torch.Generator().manual_seed(7919 * t + k))
            payload, _ = comps[k].compress(target, ctx)
            decoded = comps[k].decompress(payload, ctx)
            resid[k] = target - decoded if arm not in NO_EF else resid[k]
            cos.append(float(torch.nn.functional.cosine_similarity(decoded, target, 0)))
            steps.append(decoded)
        step = torch.stack(steps).mean(0)
        w = w + step
        m = fq.net(seed)
        set_flat(m, w)
        m.eval()
        alive: list[float] = []  # per ReLU layer: the share of its units that fire on some test image
        def fired(_m, _i, out):
            alive.append(float((out.flatten(1) > 0).any(0).float().mean()))
        hooks = [mod.register_forward_hook(fired) for mod in m.modules() if isinstance(mod, torch.nn.ReLU)]
        with torch.no_grad():
            acc = float((m(test_x).argmax(1) == test_y).float().mean())
        for h in hooks:
            h.remove()
        rows.append({"round": t, "accuracy": acc, "cos": statistics.fmean(cos) if cos else None,
                     "step": float(step.norm()), "target": statistics.fmean(norms),
                     "alive": alive})
        print(f"{arm} seed {seed} {scaling} round {t}: accuracy {acc:.3f}"
              + (f", cosine {rows[-1]['cos']:.3f}" if cos else "") + f", step {rows[-1]['step']:.2f}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--seeds", default="42,43")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {', '.join(ARMS)}")
    ap.add_argument("--scalings", default="quickstart,standard", help="comma-separated, of quickstart, standard")
    ap.add_argument("--train-subset", type=int, default=12000)
    ap.add_argument("--title", default="Flower quickstart in process: where 3SFC loses the model (issue 31)")
    args = ap.parse_args()
    arms, scalings = args.arms.split(","), args.scalings.split(",")
    bad = [a for a in arms if a not in ARMS] + [s for s in scalings if s not in ("quickstart", "standard")]
    if bad:
        ap.error(f"unknown: {', '.join(bad)} (arms: {', '.join(ARMS)}; scalings: quickstart, standard)")
    torch.set_num_threads(1)
    lines = ["| inputs | seed | arm | accuracy by round | mean client cosine by round | mean target norm by round "
             "| units alive at the end, by ReLU layer |", "|---|---|---|---|---|---|---|"]
    for scaling in scalings:
        for seed in map(int, args.seeds.split(",")):
            for arm in arms:
                rows = run(arm, seed, args.rounds, scaling, args.train_subset)
                accs = " ".join(f"{r['accuracy']:.2f}" for r in rows)
                coss = " ".join(f"{r['cos']:.2f}" for r in rows) if rows[0]["cos"] is not None else "-"
                norms = " ".join(f"{r['target']:.1f}" for r in rows)
                alive = " ".join(f"{v:.2f}" for v in rows[-1]["alive"])
                lines.append(f"| {scaling} | {seed} | {arm} | {accs} | {coss} | {norms} | {alive} |")
    body = "\n".join(lines) + (
        f"\n\nFlower quickstart-pytorch's Net and local training (SGD lr 0.1, momentum 0.9, batch 32, one epoch), "
        f"{CLIENTS} IID clients on {args.train_subset:,} Fashion-MNIST images padded to 3x32x32, FedAvg with "
        f"equal weights, in process (no Flower); accuracy on {TEST:,} test images after each round. quickstart "
        "inputs: pixels in [-1, 1] (the quickstart's Normalize); standard: per-channel standardized (the stand-in "
        "of flower_quickstart.py). 3sfc: payload_bytes 3,215 (8x8 features, M = 15, 8-bit), error feedback; "
        "3sfc-tensor: the same with one scale per parameter tensor; 3sfc-noef: 3sfc without error feedback.\n")
    write_section(args.title, body)


if __name__ == "__main__":
    main()
