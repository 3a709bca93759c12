"""Text synthesis whose payload does not grow with the vocabulary (issue 31, item 1, the text part).

Today a synthetic sample of ``textbag`` is x (V,), weights over the whole vocabulary, and one of the
``transformer`` is x (4, V), soft tokens (e3sfc.models.text): a payload is M V (4 M V) numbers,
394,540 bytes with 8-bit features at AG News's V = 98,635. Here x is parametrized by a few numbers,
and each parametrization is searched by the package's own 3SFC (``ThreeSFC.compress``: its L-BFGS,
objective, 8-bit rounding, least-squares scales) through a thin wrapper of the model whose input is
the small w and which feeds the model x = lift(w) (:class:`e3sfc.models.text.OnVocab`), so nothing of
the search or the decoder is copied here:

(a) **support**: the client picks K token ids from its target update, the K rows of the embedding
    block with the largest norm (the tokens whose embeddings its training moved most); the M
    samples share them and each carries K weights, x = scatter(w, ids) into V zeros (the
    transformer: (4, K) weights a sample, the same ids at every position). The search runs over
    w (M, K) (M, 4, K) and the labels. The decoded embedding block is x^T dL/dh, nonzero only on the
    rows x touches, so a support on the rows that hold the target's embedding energy loses only the
    energy off it. Wire: the 3SFC 8-bit fields (w as u1 (M K,), labels u1 (M, C), float32 scales)
    plus the ids, sorted and Golomb-Rice coded as Top-k codes its positions (u1 parameter b + the
    code, at most about log2(V/K) + 2 bits an id; measured with their field headers: 14-22 bytes at K = 16,
    35-67 at K = 64, 143-187 at K = 256 of V = 4,003, where int32 ids would take 4 K: the vocabulary is
    sorted by frequency and the chosen ids are mostly small, so their gaps are short).
(b) **basis**: a random matrix B (K, V) ~ N(0, 1/K) drawn from a seed both ends share; x = w B. Only
    the weights and a 4-byte seed travel, but every row of the decoded embedding block is a random
    mix, while the target's embedding energy sits on the rows of the tokens the client saw.
Control for (a): K random ids drawn from a shared seed (the support without the choice; 4 bytes).

Beside them: today's full-vocabulary x (8-bit, M = 1 and 4) at its large size, and Top-k (Golomb-coded
positions, 8-bit values, each payload's K the largest that fits; the better of tensor and global
scope) within the largest payload of each synthetic setting. Scales: ``one`` (the published alpha) or
``tensor`` (3SFC's per-tensor least-squares scales, ``--scales tensor``). Ceiling: an upper bound on the
cos^2 any decoded update of that shape can reach (each weight matrix's gradient is a sum of one outer
product per row of x, so at best the target's rank-(rows of x) approximation, the embedding's on the
support only; vectors whole); where it is far above what the search reaches, the search is the limit,
not the parametrization.

Updates: FedAvg (10 clients, Dirichlet 1.0, half of them a round, one local epoch, batch 64, lr 0.5
(configs/text.toml; 0.1 for the transformer, which does not learn at 0.5 here), 48 tokens a document,
seed 42) on a synthetic corpus in AG News's published CSV format, written as tests/test_text.py writes
its own but with a vocabulary of about 4,000 tokens (Zipf-distributed common words and words of each
class's own; 8,000 training documents) so that V matters. The true client updates Delta_k at a few
rounds are the targets (error feedback off), each compressed at its own w_t from ``--search-seeds``
starts and scored by cos^2(Delta_k, decoded) in float64 after a wire round trip (the server rebuilds
the ids from their code, the seeded draws from the seed); bytes are the encoded payload's.

    python benchmarks/text_synthesis.py                  # both models, the default settings; RESULTS.md
    python benchmarks/text_synthesis.py --models textbag --settings support:64:16:tensor,dense:0:1:one
    python benchmarks/text_synthesis.py --from-json      # the tables again
    python benchmarks/text_synthesis.py --shares         # the updates' embedding share, the ids' bytes

Results and the conclusion: benchmarks/RESULTS.md, "Text: synthetic samples whose size does not grow
with the vocabulary (issue 31)".
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import cos2, machine, true_updates, write_section
from e3sfc import wire
from e3sfc.compress import make_compressor, match_bytes
from e3sfc.compress._bits import golomb_best_b, golomb_decode, golomb_encode, golomb_gaps
from e3sfc.compress.base import Context
from e3sfc.config import RunConfig
from e3sfc.federated import Simulation
from e3sfc.federated.evaluate import evaluate
from e3sfc.federated.params import set_flat
from e3sfc.models.text import OnVocab

ROOT = Path(__file__).resolve().parent.parent
JSON = ROOT / "benchmarks" / "logs" / "text_synthesis.json"


# ------------------------------------------------------------------------------------------ updates
def write_corpus(root: Path, classes: int = 4, common: int = 3000, own: int = 250, n_train: int = 8000,
                 n_test: int = 800, seed: int = 0) -> Path:
    """AG News's CSV format (no header; class from 1, title, description), as tests/test_text.py writes
    its corpus, with a vocabulary of about ``common`` + ``classes`` x ``own`` words: each token is one of
    the class's own words with probability 1/4, else a common word; both drawn Zipf (rank^-1)."""
    rng = random.Random(seed)
    zipf = lambda n: [1.0 / (r + 1) for r in range(n)]  # noqa: E731
    cw, ow = zipf(common), zipf(own)
    words = [f"the{i}" for i in range(common)]
    owns = {c: [f"w{c}k{i}" for i in range(own)] for c in range(classes)}

    def text(c: int, n: int) -> str:
        return " ".join(rng.choices(owns[c], ow)[0] if rng.random() < 0.25 else rng.choices(words, cw)[0]
                        for _ in range(n))

    root.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.csv", n_train), ("test.csv", n_test)):
        with open(root / name, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, quoting=csv.QUOTE_ALL)
            for _ in range(n):
                c = rng.randrange(classes)
                w.writerow([c + 1, text(c, rng.randint(3, 6)).title(), text(c, rng.randint(10, 40)) + "."])
    return root


LR = {"textbag": 0.5, "transformer": 0.1}  # configs/text.toml's 0.5; the transformer does not learn at 0.5 here


def capture(model: str, root: Path, rounds: list[int], per_round: int) -> tuple[Simulation, list]:
    """FedAvg to max(rounds); the true updates (u, w_t, t, k) of ``per_round`` participants at each of
    ``rounds`` (:func:`_common.true_updates`)."""
    cfg = RunConfig(dataset="agnews", data_dir=str(root), model=model, method="fedavg", clients=10, fraction=0.5,
                    alpha=1.0, rounds=max(rounds), local_epochs=1, batch_size=64, lr=LR[model], max_len=48, seed=42,
                    eval_every=max(rounds), threads=torch.get_num_threads())
    sim = Simulation(cfg)
    return sim, true_updates(sim, rounds, per_round)


# ------------------------------------------------------------------------------------------ scoring
def embedding_rows(target: torch.Tensor, model) -> torch.Tensor:
    """The target's embedding block as (V, d) (the embedding is the models' first tensor)."""
    e = model.embedding.weight
    return target[:e.numel()].view(e.shape)


def support(target: torch.Tensor, model, k: int) -> torch.Tensor:
    """(a)'s ids: the k rows of the target's embedding block with the largest norm, sorted."""
    return embedding_rows(target, model).norm(dim=1).topk(k).indices.sort().values


def ceiling(target: torch.Tensor, model, ids: torch.Tensor | None, rank: int) -> float:
    """An upper bound on the cos^2 of any decoded update g(x, y) whose x has ``rank`` rows in all (M samples
    x positions) and touches only the vocabulary rows ``ids`` (None: all): every weight matrix's gradient
    is a sum of ``rank`` outer products (inputs x output gradients), so its best case is the target's
    best rank-``rank`` approximation, the embedding's on the rows ``ids`` only; vectors count whole."""
    got, total = 0.0, 0.0
    for p, t in zip(model.parameters(), target.double().split([p.numel() for p in model.parameters()])):
        t = t.view(p.shape)
        total += float((t * t).sum())
        if p is model.embedding.weight and ids is not None:
            t = t[ids]
        got += float((t * t).sum()) if t.dim() < 2 else float((torch.linalg.svdvals(t)[:rank] ** 2).sum())
    return got / total


def ids_fields(ids: torch.Tensor) -> list:
    """(a)'s ids on the wire: sorted, gaps Golomb-Rice coded (b as u1, then the code), as Top-k's positions."""
    gaps = golomb_gaps(ids.cpu().numpy())
    b = golomb_best_b(gaps)
    return [np.uint8(b), golomb_encode(gaps, b)]


class Probe:
    """Scores parametrizations on the captured updates, each update compressed at its own w_t."""

    def __init__(self, sim: Simulation, updates: list, args):
        self.model, self.updates, self.args = sim.client_model, updates, args
        self.classes = sim.data.num_classes
        self.vocab, self.dtype = self.model.embedding.weight.shape[0], sim.server.weights.dtype

    def ctx(self, model, w, t, k, seed: int = 0) -> Context:
        """Update (t, k)'s context; ``seed`` picks the search's start (and a control's random draw)."""
        return Context(model, w, tuple(model.synthetic_shape), self.classes, round=t, client=k,
                       generator=torch.Generator().manual_seed(1000 * t + k + 1 + 100_000 * seed))

    def encoder_net(self, kind: str, k: int, target: torch.Tensor, seed: int) -> tuple:
        """The model as the client's search sees it, and the fields that tell the server which."""
        if kind == "dense":
            return self.model, []
        if kind == "support":
            ids = support(target, self.model, k)
            return OnVocab(self.model, ids=ids), ids_fields(ids)
        return self.seeded(kind, k, seed), [np.uint32(seed)]

    def decoder_net(self, kind: str, k: int, fields: tuple) -> torch.nn.Module:
        """The same, rebuilt by the server from the payload's extra fields."""
        if kind == "dense":
            return self.model
        if kind == "support":
            ids = golomb_decode(fields[1], k, int(fields[0]), self.vocab).astype(np.int64)
            return OnVocab(self.model, ids=torch.from_numpy(ids))
        return self.seeded(kind, k, int(fields[0]))

    def seeded(self, kind: str, k: int, seed: int) -> OnVocab:
        """random: k ids (not <pad>) drawn from ``seed``; basis: B (k, V) ~ N(0, 1/k) drawn from it."""
        g = torch.Generator().manual_seed(seed)
        if kind == "random":
            return OnVocab(self.model, ids=torch.randperm(self.vocab - 1, generator=g)[:k].sort().values + 1)
        return OnVocab(self.model, basis=torch.randn(k, self.vocab, generator=g, dtype=self.dtype) / k ** 0.5)

    def synth(self, kind: str, k: int, m: int, scales: str) -> dict:
        """3SFC with 8-bit features, M = m and ``scales``, the package's search defaults, x parametrized by
        ``kind``: dense (today's, over the whole vocabulary), support, random (ids) or basis (K = k); each
        update searched from ``--search-seeds`` starts. cos2: the mean over updates and starts; cos2_seeds:
        each start's mean over the updates."""
        comp = make_compressor("3sfc", samples=m, feature_bits=8, scales=scales, steps=self.args.steps,
                               patience=self.args.patience)
        rank = m * math.prod(self.model.synthetic_shape[:-1])  # rows of x: samples x positions
        rows, t0 = [], time.perf_counter()
        for s in range(self.args.search_seeds):
            for u, w, t, c in self.updates:
                set_flat(self.model, w)
                net, extra = self.encoder_net(kind, k, u, seed=7 * t + c + 1000 * s)
                payload, _ = comp.compress(u, self.ctx(net, w, t, c, s))
                blob = wire.encode(wire.Payload.of(payload.method, *payload.fields, *extra))
                got = wire.decode(blob)
                dec = self.decoder_net(kind, k, got.fields[3:])
                decoded = comp.decompress(wire.Payload.of(got.method, *got.fields[:3]), self.ctx(dec, w, t, c))
                ceil = float("nan") if kind == "basis" else ceiling(u, self.model, getattr(dec, "ids", None), rank)
                rows.append((len(blob), cos2(u, decoded), ceil))
        b, c2, ce = zip(*rows)
        n = len(self.updates)
        seeds = [float(np.mean(c2[i:i + n])) for i in range(0, len(c2), n)]
        return {"bytes": float(np.mean(b)), "bytes_max": max(b), "cos2": float(np.mean(c2)), "cos2_seeds": seeds,
                "cos2_each": list(c2), "ceiling": float(np.mean(ce)), "seconds": time.perf_counter() - t0}

    def topk(self, budget: int) -> dict:
        """Top-k within ``budget`` bytes a payload (golomb positions, 8-bit values, K the largest that fits
        each payload): the better of tensor and global scope."""
        best = None
        for scope in ("tensor", "global"):
            coss, sizes = [], []
            for u, w, t, c in self.updates:
                set_flat(self.model, w)
                ctx = self.ctx(self.model, w, t, c)
                comp = match_bytes("topk", budget, ctx, {"index_coding": "golomb", "value_bits": 8,
                                                         "topk_scope": scope})
                payload, _ = comp.compress(u, ctx)
                sizes.append(len(comp.encode(payload)))
                coss.append(cos2(u, comp.decompress(payload, ctx)))
            r = {"scope": scope, "bytes": float(np.mean(sizes)), "cos2": float(np.mean(coss))}
            if best is None or r["cos2"] > best["cos2"]:
                best = r
        return best


def shares(probe: Probe) -> list[str]:
    """Per update: the share of its energy in the embedding block, and the Golomb-coded ids' bytes
    (their two fields, headers included) at a few K."""
    out = []
    for u, _, t, c in probe.updates:
        rows = embedding_rows(u.double(), probe.model)
        share = float((rows * rows).sum()) / float(u.double() @ u.double())
        ids = {k: len(wire.encode(wire.Payload.of(0, *ids_fields(support(u, probe.model, k))))) - 5
               for k in (16, 64, 256, 512)}
        out.append(f"round {t}, client {c}: embedding {share:.3f} of ||u||^2; ids bytes "
                   + ", ".join(f"K={k}: {b}" for k, b in ids.items()))
    return out


# ------------------------------------------------------------------------------------------ output
SETTINGS = {  # kind:K:M:scales (K unused for dense); scales tensor unless the point is one against tensor
    "textbag": "dense:0:1:one,dense:0:1:tensor,dense:0:4:one,dense:0:4:tensor,support:64:4:one,support:64:16:one,"
               "support:16:1:tensor,support:16:4:tensor,support:16:16:tensor,support:16:64:tensor,"
               "support:64:1:tensor,support:64:4:tensor,support:64:16:tensor,support:64:64:tensor,"
               "support:256:4:tensor,support:256:16:tensor,support:512:4:tensor,random:16:16:tensor,"
               "random:64:16:tensor,basis:16:16:tensor,basis:64:16:tensor",
    "transformer": "dense:0:1:one,dense:0:1:tensor,support:64:4:one,support:16:4:tensor,support:16:16:tensor,"
                   "support:64:1:tensor,support:64:4:tensor,support:256:1:tensor,random:16:4:tensor,"
                   "random:64:4:tensor,basis:64:4:tensor",
}
DESIGN = {"dense": "today: x over the vocabulary", "support": "(a) support: K ids from the target",
          "random": "control: K random ids (seed)", "basis": "(b) random basis (seed)"}


LEGEND = (
    "Real FedAvg client updates on a synthetic corpus in AG News's CSV format (4 classes, 8,000 training documents, "
    "a vocabulary of about 4,000 tokens; 10 clients, Dirichlet 1.0, 5 a round, 1 epoch, batch 64, lr 0.5 for "
    "textbag and 0.1 for the transformer, 48 tokens a document, seed 42), 2 participants at each captured round, "
    "error feedback off, each update compressed at its own w_t. Synthesis: 3SFC with 8-bit features and the "
    "package's search (10 L-BFGS steps of 20 iterations, patience 20) from two starts (each start's mean over the "
    "updates in brackets); bytes: the mean encoded payload, the ids' (Golomb-coded) or the seed's fields included. "
    "Ceiling: an upper bound on cos^2 for that shape of x (each weight matrix at its best rank-(rows of x) "
    "approximation, the embedding on the support only). Top-k: Golomb-coded positions, 8-bit values, each "
    "payload's K the largest that fits the row's largest synthetic payload (so its mean bytes may be a little "
    "higher), the better of tensor and global scope. The embedding block held 0.1-17% of an update's energy "
    "(textbag) and 0.1-2% (transformer) (`--shares`). Every number: benchmarks/logs/text_synthesis.json."
)


def table(r: dict) -> str:
    pos = " x 4 positions" if r["model"] == "transformer" else ""
    lines = [f"**{r['model']}** (V = {r['vocab']:,}, {r['params']:,} parameters; {r['n_updates']} updates, rounds "
             f"{', '.join(map(str, r['rounds']))}; test accuracy {r['accuracy']:.3f} after round {max(r['rounds'])})",
             "", f"| design | K | M{pos} | scales | bytes | captured cos^2 (each start) | ceiling | "
             "Top-k at these bytes |",
             "|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        ceil = "—" if x["kind"] == "basis" else f"{x['ceiling']:.3f}"
        k = "V" if x["kind"] == "dense" else f"{x['k']:,}"
        each = " / ".join(f"{v:.3f}" for v in x.get("cos2_seeds", []))
        top = x["topk"]
        top = f"{top['cos2']:.3f} ({top['scope']}, {top['bytes']:,.0f} B)"
        lines.append(f"| {DESIGN[x['kind']]} | {k} | {x['m']} | {x['scales']} | {x['bytes']:,.0f} | "
                     f"**{x['cos2']:.3f}** ({each}) | {ceil} | {top} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="textbag,transformer")
    ap.add_argument("--rounds", default="1,5,10", help="rounds whose updates are captured")
    ap.add_argument("--per-round", type=int, default=2, help="participants captured a round")
    ap.add_argument("--settings", default="", help="instead of the defaults: kind:K:M:scales,... (kind: dense, "
                    "support, random, basis; scales: one, tensor)")
    ap.add_argument("--steps", type=int, default=10, help="3SFC L-BFGS steps (the package's default)")
    ap.add_argument("--patience", type=int, default=20, help="3SFC early stop (the package's default; 0 = off)")
    ap.add_argument("--search-seeds", type=int, default=2, help="3SFC starts a setting and update (their spread)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--from-json", action="store_true", help="only the tables, from the JSON")
    ap.add_argument("--shares", action="store_true", help="only the updates' embedding share and the ids' bytes")
    args = ap.parse_args()
    if args.from_json:
        res = json.loads(JSON.read_text())
        print("\n\n".join(table(r) for r in res["models"].values()))
        return
    torch.set_num_threads(args.threads)
    os.environ["E3SFC_NO_DOWNLOAD"] = "1"
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:7.1f} s] {msg}", flush=True)

    rounds = [int(t) for t in args.rounds.split(",")]
    res = {"machine": machine(), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["XDG_CACHE_HOME"] = str(Path(tmp) / "cache")  # the token cache: not the user's
        root = write_corpus(Path(tmp) / "agnews")
        for model in args.models.split(","):
            sim, ups = capture(model, root, rounds, args.per_round)
            probe = Probe(sim, ups, args)
            acc, _ = evaluate(sim.model, sim.test_x, sim.test_y)
            r = {"model": model, "vocab": probe.vocab, "params": sim.num_params, "n_updates": len(ups),
                 "rounds": rounds, "accuracy": acc, "lr": sim.cfg.lr, "rows": []}
            log(f"{model}: V = {probe.vocab:,}, {sim.num_params:,} parameters, {len(ups)} updates, test accuracy "
                f"{acc:.3f} after round {max(rounds)}")
            if args.shares:
                print("\n".join(shares(probe)), flush=True)
                continue
            for spec in (args.settings or SETTINGS[model]).split(","):
                kind, k, m, scales = spec.split(":")
                x = {"kind": kind, "k": int(k), "m": int(m), "scales": scales,
                     **probe.synth(kind, int(k), int(m), scales)}
                x["topk"] = probe.topk(int(x["bytes_max"]))
                r["rows"].append(x)
                log(f"  {kind} K={k} M={m} {scales}: {x['bytes']:,.0f} B, cos2 {x['cos2']:.4f} (ceiling "
                    f"{x['ceiling']:.3f}), topk {x['topk']['cos2']:.4f}, {x['seconds']:.1f} s")
            res["models"][model] = r
    if args.shares:
        return
    res["seconds"] = time.perf_counter() - t_start
    body = "\n\n".join(table(r) for r in res["models"].values())
    print(body)
    if not args.settings:  # the default settings: the JSON and the section of benchmarks/RESULTS.md
        JSON.parent.mkdir(parents=True, exist_ok=True)
        JSON.write_text(json.dumps(res, indent=1))
        write_section("Text: synthetic samples whose size does not grow with the vocabulary (issue 31)",
                      body + f"\n\n{LEGEND} Whole run: {res['seconds']:.0f} s.")


if __name__ == "__main__":
    main()
