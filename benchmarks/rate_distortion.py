"""Rate-distortion map (issue 30, item 3): how much of a real client update each method captures,
cos^2(update, decoded), against the exact bytes of its payload, at budgets from about 500 B to 50 KB.

Updates: a short FedAvg run (Fashion-MNIST, 10 clients, Dirichlet 1.0, 30% of the clients a round,
one local epoch, batch 64, lr 0.01, seed 42) captures the true updates Delta_k of its participants
and the model w_t at a few rounds (default 1, 5, 10, 20): the server's FedAvg compressor is wrapped
on the instance, so nothing in the library changes. Models: ``mlp`` (the reference, 199,210
parameters), ``convnet-fast`` (the ConvNet, 28,650) and ``quickcnn``, Flower's quickstart-pytorch
Net (conv 3->6 k5, max-pool 2, conv 6->16 k5, fc 400->120->84->10: 62,006 parameters; ``--model
quickcnn``), on Fashion-MNIST padded to 32x32 and repeated to 3
channels: a stand-in for CIFAR-sized inputs (no CIFAR on this machine).

Each update u is compressed at its own w_t with error feedback off (the update itself is the
target; PowerSGD without a warm start, so one power iteration from a random Q), decoded, and
scored by cos^2(u, decoded) in float64; bytes are ``len(compressor.encode(payload))``. At each budget B
every method's settings whose payload fits in B are tried:

- topk: index coding int32 / golomb, values 32 / 16 / 8 bits, scope tensor / global; K the
  largest that fits (``match_bytes``: a ratio for int32, a per-payload byte budget for golomb);
- stc: int32 / golomb, tensor / global, K likewise;
- powersgd: values 32 / 16 / 8 bits, the largest rank that fits at each;
- 3sfc: features at the input's resolution in 32 / 16 / 8 bits, and at the lower resolutions R of
  AUTO_RES below the input's side (``--feature-res R``: R x R features upsampled to the input) in 8 bits
  (``--res-bits``; 4-bit features at twice the samples captured at most 0.013 more on the MLP, section
  "Synthesis at lower feature resolution"), the largest M (up to --max-samples) that fits at each, one
  scale (and one per tensor with --scales one,tensor); default steps, iterations and patience;
- sign and qsgd (16 levels): one fixed size each, a point on the map; fedsynth is left out (slow).

The best of a method's settings at each budget (highest mean cos^2 over the captured updates) is its
point there: one curve per method in docs/rate-distortion.png (log bytes), the table in
benchmarks/RESULTS.md, every setting's numbers in benchmarks/logs/rate_distortion.json.

    python benchmarks/rate_distortion.py
    python benchmarks/rate_distortion.py --from-json   # table and figure again from the JSON

The map takes hours on two cores; every scored setting is kept in
benchmarks/logs/rate_distortion.<hash>.partial.json as it finishes, and a run with the same arguments
and the same code started again (after a kill) scores only what is missing. The file goes once the
map is written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from _common import cos2, machine, true_updates, write_section
from e3sfc.compress import make_compressor, match_bytes
from e3sfc.compress.base import Context
from e3sfc.config import RunConfig
from e3sfc.data import FedData, load_dataset
from e3sfc.errors import ConfigError
from e3sfc.federated import Simulation
from e3sfc.federated.params import set_flat
from e3sfc.report import method_color

ROOT = Path(__file__).resolve().parent.parent
JSON = ROOT / "benchmarks" / "logs" / "rate_distortion.json"
FIG = ROOT / "docs" / "rate-distortion.png"
BUDGETS = (500, 1000, 3200, 6400, 12000, 50000)
POINTS = ("sign", "qsgd")  # one payload size each
AUTO_RES = (20, 16, 14, 10, 8, 4)  # 3sfc's lower feature resolutions tried by default (those below the input's side)
LABELS = {"mlp": "MLP (199,210 params, 1x28x28)", "convnet-fast": "ConvNet (convnet-fast, 28,650 params, 1x28x28)",
          "quickcnn": "quickcnn (Flower's Net, 62,006 params, 3x32x32*)"}


def cifar_shaped(d: FedData) -> FedData:
    """Fashion-MNIST as 3x32x32: padded by 2 with the background value, repeated to 3 channels (standardised
    before padding; ``--dataset fmnist-rgb32`` pads first, so its statistics count the border)."""
    bg = float(d.train_x.min())

    def f(x):
        return F.pad(x, (2, 2, 2, 2), value=bg).expand(-1, 3, -1, -1).contiguous()

    return FedData(d.name, f(d.train_x), d.train_y, f(d.test_x), d.test_y, d.num_classes)


def capture(model: str, data: FedData, rounds: list[int], per_round: int, args) -> tuple[Simulation, list]:
    """Run FedAvg to max(rounds); the true updates (u, w_t, t, k) of ``per_round`` participants
    at each of ``rounds``."""
    cfg = RunConfig(method="fedavg", dataset="fmnist", model=model, clients=10, fraction=args.fraction, alpha=1.0,
                    rounds=max(rounds), local_epochs=1, batch_size=64, lr=0.01, seed=42, eval_every=10_000,
                    train_subset=args.train_subset, test_subset=1000)
    sim = Simulation(cfg, data=data)
    return sim, true_updates(sim, rounds, per_round)


class Evaluator:
    def __init__(self, sim: Simulation, updates: list):
        self.model = sim.client_model
        self.shape, self.classes = tuple(sim.feature_shape), sim.data.num_classes
        self.updates = updates
        self.ctx0 = self.ctx(updates[0][1], 0, -1)

    def ctx(self, w, t, k) -> Context:
        return Context(self.model, w, self.shape, self.classes, round=t, client=k,
                       generator=torch.Generator().manual_seed(1000 * t + k + 1))

    def score(self, comp) -> dict:
        """Mean cos^2 and bytes of ``comp`` over the updates; 3SFC's searches of a round run together."""
        coss, sizes, t0 = [], [], time.perf_counter()
        for r in sorted({t for _, _, t, _ in self.updates}):
            group = [(u, w, t, k) for u, w, t, k in self.updates if t == r]
            set_flat(self.model, group[0][1])  # one global model a round
            ctxs = [self.ctx(w, t, k) for _, w, t, k in group]
            results = comp.compress_many([u for u, *_ in group], ctxs)
            for (u, *_), c, (payload, _) in zip(group, ctxs, results):
                sizes.append(len(comp.encode(payload)))
                coss.append(cos2(u, comp.decompress(payload, c)))
        return {"cos2": sum(coss) / len(coss), "cos2_each": coss, "bytes": sum(sizes) / len(sizes),
                "bytes_max": max(sizes), "seconds": time.perf_counter() - t0}


def settings(method: str, budget: int, ev: Evaluator, args) -> list[tuple[str, object]]:
    """(label, compressor) for each of ``method``'s settings that fit in ``budget`` bytes."""
    ctx, out = ev.ctx0, []
    if method in ("topk", "stc"):
        for coding in ("int32", "golomb"):
            for bits in ((32, 16, 8) if method == "topk" else (None,)):
                for scope in ("tensor", "global"):
                    opts = {"index_coding": coding, "topk_scope": scope, **({"value_bits": bits} if bits else {})}
                    try:
                        comp = match_bytes(method, budget, ctx, opts)
                    except ConfigError:
                        continue
                    label = f"{coding}{f', {bits}-bit' if bits else ''}, {scope}"
                    label += f", K={comp.k(ctx):,}" if coding == "int32" else f", <= {budget:,} B"
                    out.append((label, comp))
    elif method == "powersgd":
        for bits in (32, 16, 8):
            best = None
            for r in range(1, 10_000):
                comp = make_compressor("powersgd", rank=r, value_bits=bits)
                try:
                    comp.check_context(ctx)
                except ConfigError:
                    break
                if comp.payload_bytes(ctx) > budget:
                    break
                best = (f"{bits}-bit, rank {r}", comp)
            if best:
                out.append(best)
    elif method == "3sfc":
        image = len(ev.shape) == 3
        resolutions = args.feature_res if args.feature_res != "auto" else \
            [0, *(r for r in AUTO_RES if image and r < min(ev.shape[1:]))]
        for scales in args.scales:
            for res in resolutions:
                if res and (not image or res > min(ev.shape[1:])):
                    continue
                for bits in args.feature_bits if res == 0 or args.feature_res != "auto" else args.res_bits:
                    best = None
                    for m in range(1, args.max_samples + 1):
                        comp = make_compressor("3sfc", samples=m, feature_bits=bits, feature_res=res, scales=scales,
                                               batch_search=True)
                        if comp.payload_bytes(ctx) > budget:
                            break
                        best = (f"{bits}-bit{f', R={res}' if res else ''}, M={m}"
                                f"{', scale/tensor' if scales == 'tensor' else ''}", comp)
                    if best:
                        out.append(best)
    elif method in POINTS:  # one size: scored once, shown at the budgets it fits
        out.append(("16 levels" if method == "qsgd" else "scaled sign", make_compressor(method)))
    return out


def code_hash() -> str:
    """A hash of the code a score depends on (the compressors, models, data, the simulation that captures
    the updates, and this script): scores kept by other code are not reused."""
    h = hashlib.sha256()
    src = ROOT / "src" / "e3sfc"
    files = [f for d in ("compress", "models", "data", "federated") for f in (src / d).rglob("*.py")]
    for f in sorted(files) + [Path(__file__).resolve()]:
        h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


class Partial:
    """Scored settings kept on disk as they finish, so a killed run picks up where it stopped.

    One file per fingerprint (the run's arguments and :func:`code_hash`), named by its hash: a run with
    other arguments or other code neither reuses nor overwrites another's scores. JSON only, written to
    a temporary file and renamed, so a kill never leaves a half-written file."""

    def __init__(self, logs: Path, fingerprint: dict):
        key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]
        path = logs / f"rate_distortion.{key}.partial.json"
        self.path, self.fingerprint, self.data, self.kept_seconds = path, fingerprint, {}, 0.0
        try:
            old = json.loads(path.read_text())
            if old.get("fingerprint") == fingerprint:
                self.data = old["scored"]
        except (OSError, ValueError, KeyError, TypeError):
            pass

    def get(self, model: str, key: tuple[str, str]) -> dict | None:
        return self.data.get(model, {}).get("\t".join(key))

    def put(self, model: str, key: tuple[str, str], s: dict) -> None:
        self.data.setdefault(model, {})["\t".join(key)] = s
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"fingerprint": self.fingerprint, "scored": self.data}))
        tmp.replace(self.path)

    def done(self) -> None:
        self.path.unlink(missing_ok=True)


def evaluate(model: str, ev: Evaluator, args, log, partial: Partial | None = None) -> dict:
    """Every setting at every budget (each setting scored once); the best per method and budget."""
    scored: dict[tuple[str, str], dict] = {}
    best: dict[str, dict[str, dict]] = {}
    for method in args.methods:
        best[method], tried = {}, []
        for budget in sorted(args.budgets):  # a budget's candidates: every setting made for it or a smaller one
            for label, comp in settings(method, budget, ev, args):
                key = (method, label)
                tried.append(key)
                if key not in scored:
                    kept = partial.get(model, key) if partial else None
                    scored[key] = kept or ev.score(comp)
                    if partial and not kept:
                        partial.put(model, key, scored[key])
                    elif kept:
                        partial.kept_seconds += kept["seconds"]
                    s = scored[key]
                    log(f"  {model} {method} [{label}]: cos2 {s['cos2']:.4f}, {s['bytes']:,.0f} B, "
                        f"{s['seconds']:.1f} s{' (kept from an earlier run)' if kept else ''}")
            for key in tried:
                s = scored[key]
                if s["bytes_max"] <= budget and (str(budget) not in best[method]
                                                 or s["cos2"] > best[method][str(budget)]["cos2"]):
                    best[method][str(budget)] = {"setting": key[1],
                                                 **{k: s[k] for k in ("cos2", "bytes", "bytes_max")}}
    points = {m: {"setting": lab, **{k: s[k] for k in ("cos2", "bytes", "bytes_max")}}
              for (m, lab), s in scored.items() if m in POINTS}
    return {"settings": [{"method": m, "setting": lab, **s} for (m, lab), s in scored.items()], "best": best,
            "points": points}


# ------------------------------------------------------------------------------------------ output
MARKERS = {"topk": "o", "stc": "s", "powersgd": "^", "3sfc": "D", "sign": "*", "qsgd": "P"}  # colours: the project's


def table(res: dict) -> str:
    budgets = res["budgets"]
    lines = []
    for model, r in res["models"].items():
        lines += [f"**{LABELS.get(model, model)}**, {r['n_updates']} updates (rounds "
                  f"{', '.join(map(str, r['rounds']))}); cell: mean captured cos^2 (the best setting; mean bytes)", "",
                  "| method | " + " | ".join(f"<= {b:,} B" for b in budgets) + " |",
                  "|---|" + "---|" * len(budgets)]
        for method, per in r["best"].items():
            if method in POINTS:
                continue
            cells = []
            for b in budgets:
                c = per.get(str(b))
                setting = re.sub(r", <= [\d,]+ B$", "", c["setting"]) if c else ""  # golomb: K fills the budget
                cells.append("—" if c is None else f"**{c['cos2']:.3f}** ({setting}; {c['bytes']:,.0f} B)")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        pts = [f"{m} {p['cos2']:.3f} at {p['bytes']:,.0f} B" for m, p in r.get("points", {}).items()]
        lines += ["", f"One size each: {'; '.join(pts)}." if pts else "", ""]
    return "\n".join(lines)


def settings_table(res: dict) -> str:
    """Every setting scored, one row each (the largest M that fit at each budget), for each model."""
    lines = []
    for model, r in res["models"].items():
        lines += [f"Every setting, {LABELS.get(model, model)}:", "", "| setting | bytes | cos^2 |", "|---|---|---|"]
        for c in sorted(r["settings"], key=lambda c: c["bytes"]):
            lines.append(f"| {c['setting']} | {c['bytes']:,.0f} | {c['cos2']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def figure(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(res["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(5.6 * len(models), 5.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        r = res["models"][model]
        for method, per in r["best"].items():
            color, marker = method_color(method), MARKERS.get(method, "x")
            if method in POINTS:
                p = r["points"].get(method)
                if p:
                    ax.scatter([p["bytes"]], [p["cos2"]], color=color, marker=marker, s=140, zorder=3,
                               label=f"{method}{', 16 levels' if method == 'qsgd' else ''} (one size)")
                continue
            pts = sorted({(c["bytes"], c["cos2"]) for c in per.values()})
            if not pts:
                continue
            xs, ys = zip(*pts)
            ax.plot(xs, ys, color=color, marker=marker, lw=2, ms=6, label=method)
        for b in res["budgets"]:
            ax.axvline(b, color="0.85", lw=0.8, zorder=0)
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_xlim(300, 3e5)
        ax.set_xlabel("payload bytes (log)")
        ax.set_title(f"{LABELS.get(model, model)}\n{r['n_updates']} updates, rounds {', '.join(map(str, r['rounds']))}",
                     fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
    axes[0][0].set_ylabel("captured cos$^2$(update, decoded)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False,
               bbox_to_anchor=(0.5, 0.035))
    fig.suptitle("Rate-distortion on real FedAvg client updates (Fashion-MNIST; the best setting of each method "
                 "at each budget; grey lines: the budgets)", fontsize=10)
    fig.text(0.5, 0.005, "* Fashion-MNIST padded to 32x32 and repeated to 3 channels, a stand-in for CIFAR-sized "
             "inputs. Error feedback off; PowerSGD cold (one power iteration).", ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.09, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mlp,convnet-fast,quickcnn")
    ap.add_argument("--methods", default="topk,stc,powersgd,3sfc,sign,qsgd")
    ap.add_argument("--rounds", default="1,5,10,20", help="rounds whose updates are captured")
    ap.add_argument("--per-round", default="mlp:3,convnet-fast:2,quickcnn:3",
                    help="participants captured a round, per model (3SFC's search on the ConvNet is slow)")
    ap.add_argument("--fraction", type=float, default=0.3)
    ap.add_argument("--train-subset", type=int, default=20000, help="training images kept (seeded; 0 = all 60,000)")
    ap.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    ap.add_argument("--max-samples", type=int, default=64, help="3SFC: largest M tried")
    ap.add_argument("--scales", default="one", help="3SFC: one, or one,tensor")
    ap.add_argument("--res-bits", default="8", help="3SFC: feature bits tried at the lower resolutions of the "
                    "default --feature-res auto")
    ap.add_argument("--feature-res", default="auto", help="3SFC: auto (the input's own and AUTO_RES below its side: "
                    "the map), or the feature resolutions R to tabulate (0: the input's own), "
                    "e.g. 0,20,14,10,7; anything but 0 writes its own section, JSON and figure (suffix -res)")
    ap.add_argument("--feature-bits", default="32,16,8", help="3SFC: feature bits tried (32, 16, 8, 4)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--from-json", action="store_true", help="only the table and figure, from the JSON")
    args = ap.parse_args()
    if args.feature_res != "auto":
        args.feature_res = [int(r) for r in args.feature_res.split(",")]
    args.feature_bits = [int(b) for b in args.feature_bits.split(",")]
    args.res_bits = [int(b) for b in args.res_bits.split(",")]
    lowres = args.feature_res not in ("auto", [0])  # a table of the resolutions asked for, not the map
    json_path = JSON.with_name(JSON.stem + "-res.json") if lowres else JSON
    fig_path = FIG.with_name(FIG.stem + "-res.png") if lowres else FIG
    if args.from_json:
        res = json.loads(json_path.read_text())
    else:
        torch.set_num_threads(args.threads)
        args.methods, args.scales = args.methods.split(","), args.scales.split(",")
        args.budgets = [int(b) for b in args.budgets.split(",")]
        rounds = [int(r) for r in args.rounds.split(",")]
        t_start = time.perf_counter()
        fm = load_dataset("fmnist", train_subset=args.train_subset, test_subset=1000, seed=42)
        res = {"budgets": args.budgets, "models": {}, "machine": machine()}
        json_path.parent.mkdir(parents=True, exist_ok=True)
        fingerprint = {**{k: v for k, v in sorted(vars(args).items()) if k != "from_json"}, "code": code_hash()}
        partial = Partial(json_path.parent, fingerprint)

        def log(msg):
            print(f"[{time.perf_counter() - t_start:7.1f} s] {msg}", flush=True)

        for model in args.models.split(","):
            t0 = time.perf_counter()
            per = dict((m, int(n)) for m, n in (x.split(":") for x in args.per_round.split(","))).get(model, 3)
            sim, ups = capture(model, cifar_shaped(fm) if model == "quickcnn" else fm, rounds, per, args)
            log(f"{model}: {sim.num_params:,} parameters, {len(ups)} updates captured in "
                f"{time.perf_counter() - t0:.1f} s")
            out = evaluate(model, Evaluator(sim, ups), args, log, partial)
            res["models"][model] = {"num_params": sim.num_params, "input_shape": list(sim.feature_shape),
                                    "rounds": rounds, "n_updates": len(ups),
                                    "updates": [{"round": t, "client": k, "norm": float(u.norm())}
                                                for u, _, t, k in ups],
                                    "seconds": time.perf_counter() - t0, **out}
            log(f"{model}: done in {time.perf_counter() - t0:.1f} s")
        res["seconds"] = time.perf_counter() - t_start + partial.kept_seconds  # earlier runs' scoring included
        json_path.write_text(json.dumps(res, indent=1))
        partial.done()
    body = table(res)
    print(body)
    if lowres:  # one method: a table of every setting says more than a figure of one curve
        body += "\n" + settings_table(res)
    else:
        figure(res, fig_path)
    if lowres:  # written from the JSON too: the section is the table, nothing drawn
        write_section(
            "Synthesis at lower feature resolution: captured cos^2 against payload bytes (issues 30, 31)",
            body
            + f"\nThe updates and scoring of the section above; 3sfc at feature resolutions R "
            f"{'/'.join(str(r or 'own') for r in args.feature_res)} (`--feature-res`: the search runs over R x R "
            f"features, bilinearly upsampled to the input) and {'/'.join(map(str, args.feature_bits))}-bit "
            f"features, the largest M (<= {args.max_samples}) that fits; the first table names the best, the "
            f"second lists every setting (R: own = the input's). Every number: benchmarks/logs/{json_path.name}. "
            f"Whole run: {res['seconds']:.0f} s.")
    elif not args.from_json:
        write_section(
            "Rate-distortion: captured cos^2 against payload bytes (issue 30)",
            body + f"\nReal FedAvg updates (Fashion-MNIST, 10 clients, Dirichlet 1.0, {args.fraction:.0%} a round, "
            f"{args.train_subset or 60000:,} training images, 1 epoch, batch 64, lr 0.01, seed 42), "
            "error feedback off, "
            "each update compressed at its own w_t; bytes are the encoded payload. Budgets are upper bounds: "
            "each method's best setting (by mean cos^2) whose every payload fits. topk/stc: K the largest that fits "
            "(int32 or golomb positions, tensor or global scope); powersgd: the largest rank at 32/16/8 bits, no "
            "warm start (one power iteration from a random Q); 3sfc: the largest M (<= "
            f"{args.max_samples}) at {'/'.join(map(str, args.feature_bits))}-bit features at the input's resolution"
            + (f" and {'/'.join(map(str, args.res_bits))}-bit at R = {'/'.join(map(str, AUTO_RES))} below the "
               "input's side (R=r in a cell: r x r features upsampled)" if args.feature_res == "auto" else "")
            + f", scales {'/'.join(args.scales)}, default search; sign and "
            "qsgd (16 levels) have one size; fedsynth left out (slow). * quickcnn is Flower's quickstart Net on "
            "Fashion-MNIST padded to 32x32 and repeated to 3 channels, a stand-in for CIFAR-sized inputs. "
            f"Figure: docs/rate-distortion.png; every setting: benchmarks/logs/rate_distortion.json. "
            f"Whole run: {res['seconds']:.0f} s.")


if __name__ == "__main__":
    main()
