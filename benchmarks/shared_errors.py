"""Do the clients' compression errors add up in the mean (issue 31's lead)? On the true updates of all
10 clients of one FedAvg round, each compressed alone (no error feedback), the error of client k is
e_k = decoded_k - u_k. Independent errors shrink in the mean of K clients (|mean e|^2 about 1/K of the
mean |e_k|^2); shared ones do not. Per method: the mean per-client cos(decoded_k, u_k), the aggregate's
cos(mean decoded, mean u), the mean pairwise cosine between clients' errors and between their true
updates, and |mean e|^2 / mean |e_k|^2 (1/K for independent errors, 1 for identical ones).

Updates: a FedAvg run (10 clients, all take part, Dirichlet 1.0, one local epoch, batch 64, lr 0.01, seed
42) to each of ``--rounds``; models ``mlp`` (Fashion-MNIST) and ``quickcnn`` (Fashion-MNIST padded to
3x32x32, ``--train-subset`` images). Methods at about 3.2 KB a payload: 3SFC as ``--payload-bytes 3215``
picks it (MLP: full resolution, M = 4, 8-bit; quickcnn: 8x8, M = 15, 8-bit), PowerSGD rank 2 (quickcnn) or
rank 1 (MLP) 8-bit with no warm start, Top-k with Golomb positions and 8-bit values at the 3SFC payload's
bytes.

    python benchmarks/shared_errors.py --models quickcnn,mlp --rounds 10,30
    python benchmarks/shared_errors.py --models quickcnn --rounds 10,30 --trajectory 3sfc [--per-tensor]
    python benchmarks/shared_errors.py --models quickcnn --rounds 15,30 --trajectory 3sfc --stacked

``--stacked`` (the hybrid payload lead): one payload made of two compressors, the second applied to what
the first left of the update (u - decoded_1), decoded as the sum, against PowerSGD of about the same
total bytes; 3SFC's part sized by ``payload_bytes``, PowerSGD 8-bit with no warm start.
"""

from __future__ import annotations

import argparse
import itertools
import statistics

import torch

from _common import true_updates, write_section
from e3sfc.compress import make_compressor, match_bytes
from e3sfc.compress.base import Context
from e3sfc.config import RunConfig
from e3sfc.federated import Simulation
from e3sfc.federated.params import set_flat


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    n = float(a.norm() * b.norm())
    return float(a @ b) / n if n > 0 else 0.0


def methods(model: str, stacked: bool = False) -> dict[str, list[dict]]:
    """label -> the compressors of one payload, each applied to what the ones before it left."""
    def synth(b: int) -> dict:
        return {"method": "3sfc", "payload_bytes": b}

    def psgd(r: int) -> dict:
        return {"method": "powersgd", "rank": r, "value_bits": 8}

    if stacked:
        return {"3sfc (payload-bytes 3215)": [synth(3215)], "powersgd rank 1": [psgd(1)],
                "powersgd rank 2": [psgd(2)], "powersgd rank 3": [psgd(3)],
                "3sfc 1600 B, then powersgd rank 1": [synth(1600), psgd(1)],
                "powersgd rank 1, then 3sfc 1600 B": [psgd(1), synth(1600)],
                "3sfc 800 B, then powersgd rank 2": [synth(800), psgd(2)],
                "powersgd rank 2, then 3sfc 800 B": [psgd(2), synth(800)]}
    return {"3sfc (payload-bytes 3215)": [synth(3215)],
            f"powersgd rank {2 if model == 'quickcnn' else 1}, 8-bit": [psgd(2 if model == "quickcnn" else 1)],
            "topk golomb 8-bit": [{"method": "topk", "index_coding": "golomb", "value_bits": 8}]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="quickcnn,mlp")
    ap.add_argument("--rounds", default="10,30")
    ap.add_argument("--train-subset", type=int, default=12000)
    ap.add_argument("--per-tensor", action="store_true",
                    help="at the last round, each parameter tensor's share of the mean error's and the mean "
                    "update's energy, and the clients' pairwise error cosine within it")
    ap.add_argument("--trajectory", default="fedavg", choices=("fedavg", "3sfc"),
                    help="whose run the updates come from: FedAvg's, or 3SFC's own (--payload-bytes 3215, no error "
                    "feedback, so that the captured targets are the true updates)")
    ap.add_argument("--stacked", action="store_true",
                    help="payloads of two compressors, the second on the first's remainder, against PowerSGD")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rounds = [int(r) for r in args.rounds.split(",")]
    lines = [f"Updates along {'FedAvg' if args.trajectory == 'fedavg' else '3SFC (no error feedback)'}'s run.\n",
             "| model | round | method | bytes | client cos | aggregate cos | error pair cos | update pair cos "
             "| mean error energy share |", "|---|---|---|---|---|---|---|---|---|"]
    tensors = ["| model | round | method | tensor | numbers | share of the mean error's energy "
               "| share of the mean update's energy | error pair cos |", "|---|---|---|---|---|---|---|---|"]
    for model in args.models.split(","):
        data = "fmnist-rgb32" if model == "quickcnn" else "fmnist"
        run = {"method": "3sfc", "payload_bytes": 3215, "ef": False, "batch_search": True} \
            if args.trajectory == "3sfc" else {"method": "fedavg"}
        cfg = RunConfig(**run, dataset=data, model=model, clients=10, alpha=1.0, rounds=max(rounds),
                        local_epochs=1, batch_size=64, lr=0.01, seed=42, eval_every=10_000,
                        train_subset=args.train_subset if model == "quickcnn" else 0, test_subset=1000)
        sim = Simulation(cfg)
        ups = true_updates(sim, rounds, 10)
        net, shape, classes = sim.client_model, tuple(sim.feature_shape), sim.data.num_classes
        size = None
        for label, parts in methods(model, args.stacked).items():
            comps = None
            for r in rounds:
                group = [(u, w, k) for u, w, t, k in ups if t == r]
                set_flat(net, group[0][1])
                ctxs = [Context(net, w, shape, classes, round=r, client=k,
                                generator=torch.Generator().manual_seed(1000 * r + k + 1)) for _, w, k in group]
                if comps is None:
                    comps = []
                    for opts in parts:
                        o = dict(opts)
                        name = o.pop("method")
                        comps.append(match_bytes(name, size, ctxs[0], o) if name == "topk"
                                     else make_compressor(name, **o))
                        comps[-1].check_context(ctxs[0])
                dec, nbytes = [], []
                for (u, _, _), c in zip(group, ctxs):
                    rest, total, n = u.clone(), torch.zeros_like(u), 0
                    for comp in comps:
                        payload, _ = comp.compress(rest, c)
                        n += len(comp.encode(payload))
                        d = comp.decompress(payload, c)
                        total, rest = total + d, rest - d
                    nbytes.append(n)
                    dec.append(total.double())
                us = [u.double() for u, _, _ in group]
                errs = [d - u for d, u in zip(dec, us)]
                mean_e = torch.stack(errs).mean(0)
                share = float(mean_e @ mean_e) / statistics.fmean(float(e @ e) for e in errs)
                pairs = list(itertools.combinations(range(len(us)), 2))
                row = (model, r, label, max(nbytes), statistics.fmean(cos(d, u) for d, u in zip(dec, us)),
                       cos(torch.stack(dec).mean(0), torch.stack(us).mean(0)),
                       statistics.fmean(cos(errs[i], errs[j]) for i, j in pairs),
                       statistics.fmean(cos(us[i], us[j]) for i, j in pairs), share)
                if size is None:
                    size = max(nbytes)
                if args.per_tensor and r == max(rounds):  # where the mean's error sits, tensor by tensor
                    mean_u, at = torch.stack(us).mean(0), 0
                    for name, p in net.named_parameters():
                        sl = slice(at, at + p.numel())
                        at += p.numel()
                        tensors.append(f"| {model} | {r} | {label} | {name} | {p.numel():,} "
                                       f"| {float(mean_e[sl] @ mean_e[sl]) / float(mean_e @ mean_e):.3f} "
                                       f"| {float(mean_u[sl] @ mean_u[sl]) / float(mean_u @ mean_u):.3f} "
                                       f"| {statistics.fmean(cos(errs[i][sl], errs[j][sl]) for i, j in pairs):.3f} |")
                lines.append("| {} | {} | {} | {:,} | {:.3f} | {:.3f} | {:.3f} | {:.3f} | {:.3f} |".format(*row))
                print(lines[-1], flush=True)
    print("\n".join(tensors[2:]), flush=True)
    who = "FedAvg's run" if args.trajectory == "fedavg" else "3SFC's own run (no error feedback)"
    write_section("Shared compression errors: do the clients' errors add up in the mean? (issue 31)"
                  + ("" if args.trajectory == "fedavg" else ", along 3SFC's own run")
                  + (", two compressors in one payload" if args.stacked else ""),
                  "\n".join(lines) + ("\n\n" + "\n".join(tensors) if args.per_tensor else "")
                  + f"\n\nAll 10 clients of a round of {who}, each true update compressed alone "
                  "(no error feedback); client cos and aggregate cos are cosines, not their squares. With "
                  "independent errors the mean error energy share is about 1/K = 0.1.")


if __name__ == "__main__":
    main()
