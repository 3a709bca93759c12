"""How far a 3SFC search started from data (``--feature-init data``) moves the synthetic features from the
client's own images (issue 31; the privacy note of docs/design.md §1.1).

A 3SFC run of the quickstart CNN on Fashion-MNIST padded to 3x32x32 (``--payload-bytes 3215``: 8x8 features,
M = 15, 8-bit; 12,000 training images, 10 clients), the search started from each client's samples. For each
client at the chosen rounds: the cosine of each sent sample (before the 8-bit rounding) with the
downsampled image it started from, min and mean over the M samples, and |x - start| / |start|.

    python benchmarks/data_start_distance.py --rounds 10 --report 1,5,10
"""

from __future__ import annotations

import argparse
import tempfile

import torch

import e3sfc.compress.threesfc as threesfc
from _common import write_section
from e3sfc.config import RunConfig
from e3sfc.federated import Simulation


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--report", default="1,5,10", help="rounds to report")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--title", default="3SFC started from data: how far the sent features move from the client's "
                                        "images (issue 31)")
    a = ap.parse_args()
    report = {int(r) for r in a.report.split(",")}
    starts: dict[tuple[int, int], torch.Tensor] = {}
    finals: list[tuple[int, int, torch.Tensor]] = []
    data_start, rounding = threesfc.data_start, threesfc.ThreeSFC._round

    def spy_start(data, x_shape, y_shape, g, ctx):  # this process only: record each search's start
        x, y = data_start(data, x_shape, y_shape, g, ctx)
        starts[ctx.round, ctx.client] = x.clone()  # searches run together end in any order: keyed
        return x, y

    def spy_round(self, x, y, ctx):  # and the features it ends at, before the 8-bit rounding
        finals.append((ctx.round, ctx.client, x.detach().clone()))
        return rounding(self, x, y, ctx)

    threesfc.data_start, threesfc.ThreeSFC._round = spy_start, spy_round
    with tempfile.TemporaryDirectory() as out:
        cfg = RunConfig.from_sources("configs/reference.toml", dataset="fmnist-rgb32", model="quickcnn",
                                     rounds=a.rounds, train_subset=12000, init="seed", method="3sfc",
                                     payload_bytes=3215, steps=10, seed=a.seed, threads=1, feature_init="data",
                                     out=out)
        Simulation(cfg).run()
    rows = ["| round | client | sample cos with its start: min | mean | \\|x - start\\| / \\|start\\| |",
            "|---|---|---|---|---|"]
    for t, k, x in sorted(finals, key=lambda f: f[:2]):
        s = starts[t, k]
        if t in report:
            cos = torch.nn.functional.cosine_similarity(x.reshape(len(x), -1), s.reshape(len(s), -1))
            rows.append(f"| {t} | {k} | {cos.min():.3f} | {cos.mean():.3f} | {(x - s).norm() / s.norm():.3f} |")
    body = "\n".join(rows) + (f"\n\nquickcnn, fmnist-rgb32 (12,000 training images), 10 clients, Dirichlet 1.0, "
                               f"--payload-bytes 3215 (8x8, M = 15, 8-bit), --feature-init data, seed {a.seed}, one "
                               "way; the features as the search left them, before the 8-bit rounding.\n")
    write_section(a.title, body)
    print(body)


if __name__ == "__main__":
    main()
