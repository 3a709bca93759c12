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


def methods(model: str) -> dict[str, dict]:
    return {"3sfc (payload-bytes 3215)": {"method": "3sfc", "payload_bytes": 3215},
            f"powersgd rank {2 if model == 'quickcnn' else 1}, 8-bit":
                {"method": "powersgd", "rank": 2 if model == "quickcnn" else 1, "value_bits": 8},
            "topk golomb 8-bit": {"method": "topk", "index_coding": "golomb", "value_bits": 8}}


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
        for label, opts in methods(model).items():
            comp = None
            for r in rounds:
                group = [(u, w, k) for u, w, t, k in ups if t == r]
                set_flat(net, group[0][1])
                ctxs = [Context(net, w, shape, classes, round=r, client=k,
                                generator=torch.Generator().manual_seed(1000 * r + k + 1)) for _, w, k in group]
                if comp is None:
                    o = dict(opts)
                    name = o.pop("method")
                    comp = match_bytes(name, size, ctxs[0], o) if name == "topk" else make_compressor(name, **o)
                    comp.check_context(ctxs[0])
                dec, nbytes = [], []
                for (u, _, _), c in zip(group, ctxs):
                    payload, _ = comp.compress(u, c)
                    nbytes.append(len(comp.encode(payload)))
                    dec.append(comp.decompress(payload, c).double())
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
    write_section("Shared compression errors: do the clients' errors add up in the mean? (issue 31)"
                  + ("" if args.trajectory == "fedavg" else ", along 3SFC's own run"),
                  "\n".join(lines) + ("\n\n" + "\n".join(tensors) if args.per_tensor else "")
                  + "\n\nAll 10 clients of a FedAvg round, each true update compressed alone "
                  "(no error feedback). With independent errors the mean error energy share is about 1/K = 0.1.")


if __name__ == "__main__":
    main()
