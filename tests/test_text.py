"""Text: readers for the published formats (written here, small), the basic_english tokenizer, the
vocabulary and its cache, the two text models and their synthetic paths, 3SFC's exact bytes and a
short federated run that learns, replicas and resume."""

from __future__ import annotations

import csv
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from e3sfc.compress import make_compressor
from e3sfc.compress.base import Context
from e3sfc.config import RunConfig
from e3sfc.data import load_dataset
from e3sfc.data import text as textdata
from e3sfc.errors import DataError
from e3sfc.federated import Simulation, get_flat
from e3sfc.models import build_model, num_params, synthetic_shape
from conftest import assert_resume_equals_no_stop


def write_csv(root: Path, classes: int, n_train: int = 240, n_test: int = 80, seed: int = 0) -> Path:
    """A dataset in the char-CNN CSV format (no header; class from 1, title, description), each class
    with words of its own among common ones."""
    rng = random.Random(seed)
    own = {c: [f"w{c}k{i}" for i in range(8)] for c in range(classes)}
    common = [f"the{i}" for i in range(20)]
    root.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.csv", n_train), ("test.csv", n_test)):
        with open(root / name, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, quoting=csv.QUOTE_ALL)
            for _ in range(n):
                c = rng.randrange(classes)
                pick = own[c] + common
                w.writerow([c + 1, " ".join(rng.choice(pick) for _ in range(3)).title(),
                            " ".join(rng.choice(pick) for _ in range(rng.randint(4, 20))) + ", it's \"so\"!"])
    return root


def write_imdb(root: Path, n: int = 40, seed: int = 0) -> Path:
    rng = random.Random(seed)
    for part in ("train", "test"):
        for label, name in ((0, "neg"), (1, "pos")):
            d = root / "aclImdb" / part / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                words = [rng.choice(["bad", "awful", "dull"] if label == 0 else ["good", "great", "fun"])
                         for _ in range(6)]
                (d / f"{i}_{rng.randint(1, 10)}.txt").write_text(f"This movie was {' '.join(words)}.<br />The end.")
    return root


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_basic_english_rules():
    assert textdata.tokenize("You can now install TorchText using pip!") == \
        ["you", "can", "now", "install", "torchtext", "using", "pip", "!"]
    assert textdata.tokenize('It\'s "fine", (really)? a;b:c.<br />Next') == \
        ["it", "'", "s", "fine", ",", "(", "really", ")", "?", "a", "b", "c", ".", "next"]


def test_vocabulary_order_cap_and_encoding():
    docs = [["b", "a", "c"], ["a", "b"], ["a", "d"]]
    assert textdata.build_vocab(docs) == ["<pad>", "<unk>", "a", "b", "c", "d"]    # frequency, then alphabetical
    assert textdata.build_vocab(docs, min_freq=2) == ["<pad>", "<unk>", "a", "b"]
    assert textdata.build_vocab(docs, vocab_size=3) == ["<pad>", "<unk>", "a"]
    ids = textdata.encode([["a", "zz", "b"], ["a"] * 5], ["<pad>", "<unk>", "a", "b"], max_len=4)
    assert ids.tolist() == [[2, 1, 3, 0], [2, 2, 2, 2]] and ids.dtype == np.int32


def test_agnews_and_sogou_read_and_cached(tmp_path, monkeypatch):
    for name, classes in (("agnews", 4), ("sogou", 5)):
        root = write_csv(tmp_path / name, classes)
        d = load_dataset(name, str(root), max_len=16)
        assert d.num_classes == classes and d.train_x.shape == (240, 16) and d.test_x.shape == (80, 16)
        assert d.train_x.dtype == torch.int64 and int(d.train_y.max()) < classes and d.vocab_size > 40
        monkeypatch.setattr(textdata, "tokenize", lambda s: pytest.fail("tokenized again"))
        again = load_dataset(name, str(root), max_len=16)  # from the cache
        assert torch.equal(again.train_x, d.train_x) and again.vocab_size == d.vocab_size
        monkeypatch.undo()
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_imdb_folder(tmp_path):
    d = load_dataset("imdb", str(write_imdb(tmp_path / "imdb")), max_len=12)
    assert d.num_classes == 2 and len(d.train_y) == 80 and sorted(set(d.train_y.tolist())) == [0, 1]


@pytest.mark.parametrize("damage,match", [
    (lambda p: p.write_text('"1","title only"\n"7","bad class","x"\n'), "class 7 is outside 1..4"),
    (lambda p: p.write_text('"one","a","b"\n'), "is not an integer"),
    (lambda p: p.write_text('"1"\n'), "expected class, title, text"),
    (lambda p: p.write_bytes(b"\xff\xfe\x00bad\n"), "not a readable CSV"),
    (lambda p: p.write_bytes(p.read_bytes()[:-15]), "truncated"),
    (lambda p: p.write_text('"1","a "b" c","d"\n'), "not a readable CSV"),
    (lambda p: p.unlink(), "not found"),
])
def test_bad_files_are_one_line_errors(tmp_path, damage, match):
    root = write_csv(tmp_path / "ag", 4)
    damage(root / "train.csv")
    with pytest.raises(DataError, match=match):
        load_dataset("agnews", str(root))
    if match == "not found":
        r = subprocess.run([sys.executable, "-m", "e3sfc.cli", "run", "--dataset", "agnews", "--model", "textbag",
                            "--data-dir", str(root), "--rounds", "1"], capture_output=True, text=True)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "agnews" in r.stderr


def test_models_refuse_the_wrong_kind_of_data():
    from e3sfc.errors import ConfigError
    with pytest.raises(ConfigError, match="textbag or transformer for a text dataset"):
        build_model("mlp", (16,), 4, 0, vocab_size=50)
    with pytest.raises(ConfigError, match="expected an image model"):
        build_model("textbag", (1, 28, 28), 10, 0)


def test_textbag_synthetic_path_is_the_bag_mean_and_parameter_count():
    m = build_model("textbag", (6,), 4, 0, vocab_size=50)
    ids = torch.tensor([[5, 7, 7, 9, 0, 0]])
    freq = torch.zeros(1, 50)
    for t in (5, 7, 7, 9):
        freq[0, t] += 0.25
    torch.testing.assert_close(m(freq), m(ids))
    assert synthetic_shape(m, (6,)) == (50,)
    # the authors' size: V = 98,635, C = 4
    assert num_params(build_model("textbag", (128,), 4, 0, vocab_size=98_635)) == 6_317_060


def test_transformer_one_hot_soft_tokens_are_real_tokens():
    m = build_model("transformer", (8,), 3, 0, vocab_size=30).eval()
    ids = torch.tensor([[4, 9, 2, 17]])
    soft = torch.nn.functional.one_hot(ids, 30).double()
    m = m.double()
    torch.testing.assert_close(m(soft), m(ids))
    assert synthetic_shape(m, (8,)) == (4, 30)
    empty = torch.zeros(1, 8, dtype=torch.long)  # a document with no tokens does not make NaN
    assert torch.isfinite(m(empty)).all()


@pytest.mark.parametrize("model", ["textbag", "transformer"])
def test_on_vocab_is_the_dense_input_it_represents(model):
    """OnVocab (benchmarks/text_synthesis.py): w on K ids, or in a basis, decodes to the gradient of the dense
    x it stands for, bit for bit, and the 3SFC search's gradient by w is the dense one's on those ids (the
    chain rule through the scatter); token ids pass through."""
    from e3sfc.compress.synth import CosineMatch, synth_grad
    from e3sfc.models.text import OnVocab
    V, C, K = 30, 3, 5
    g = torch.Generator().manual_seed(0)
    net = build_model(model, (8,), C, 0, vocab_size=V).double().eval()
    ids = torch.tensor([2, 3, 11, 17, 29])
    w = torch.randn(2, *net.synthetic_shape[:-1], K, dtype=torch.float64, generator=g)
    y = torch.randn(2, C, dtype=torch.float64, generator=g)
    x = torch.zeros(*w.shape[:-1], V, dtype=torch.float64)
    x[..., ids] = w
    sparse = OnVocab(net, ids=ids)
    assert sparse.synthetic_shape == (*net.synthetic_shape[:-1], K)
    assert [p is q for p, q in zip(sparse.parameters(), net.parameters())] == [True] * len(list(net.parameters()))
    assert torch.equal(synth_grad(sparse, w, y), synth_grad(net, x, y))
    basis = torch.randn(K, V, dtype=torch.float64, generator=g)
    assert torch.equal(synth_grad(OnVocab(net, basis=basis), w, y), synth_grad(net, w @ basis, y))
    tau = torch.randn(get_flat(net).numel(), dtype=torch.float64, generator=g)
    _, _, dz = CosineMatch(sparse, tau, tuple(w.shape), tuple(y.shape))(torch.cat([w.reshape(-1), y.reshape(-1)]))
    _, _, dzx = CosineMatch(net, tau, tuple(x.shape), tuple(y.shape))(torch.cat([x.reshape(-1), y.reshape(-1)]))
    torch.testing.assert_close(dz[:w.numel()].view(w.shape), dzx[:x.numel()].view(x.shape)[..., ids])
    torch.testing.assert_close(dz[w.numel():], dzx[x.numel():])
    tokens = torch.tensor([[4, 9, 2, 0, 0, 0, 0, 0]])
    assert torch.equal(sparse(tokens), net(tokens))


@pytest.mark.parametrize("model", ["textbag", "transformer"])
def test_3sfc_payload_bytes_and_the_embedding_moves(model):
    V, C = 40, 4
    net = build_model(model, (8,), C, 0, vocab_size=V).double().eval()
    shape = synthetic_shape(net, (8,))
    ctx = Context(net, get_flat(net), shape, C, generator=torch.Generator().manual_seed(0))
    comp = make_compressor("3sfc", samples=2, steps=1, max_iter=4)
    tau = torch.randn(ctx.num_params, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    payload, _ = comp.compress(tau, ctx)
    blob = comp.encode(payload)
    d = int(np.prod(shape))
    header = 5 + (2 + 4 * (1 + len(shape))) + (2 + 8) + 2
    assert len(blob) == comp.payload_bytes(ctx) == 4 * (2 * d + 2 * C + 1) + header
    upd = comp.decompress(comp.decode(blob, ctx), ctx)
    emb = net.embedding.weight.numel()
    assert float(upd[:emb].abs().sum()) > 0  # the embedding is the first tensor and its update is not zero


def test_short_run_learns_and_e3sfc_replicas_and_resume(tmp_path):
    root = str(write_csv(tmp_path / "ag", 4, n_train=400, n_test=120))
    fed = Simulation(RunConfig(dataset="agnews", data_dir=root, model="textbag", method="fedavg", clients=3,
                               rounds=3, lr=0.5, batch_size=16, max_len=24, threads=1))
    fed.run()
    assert fed.metrics[-1]["accuracy"] > 0.5  # 4 classes: chance is 0.25
    cfg = RunConfig(dataset="agnews", data_dir=root, model="textbag", method="e3sfc", clients=3, rounds=3,
                    lr=0.5, batch_size=16, max_len=24, steps=1, max_iter=4, feature_bits=8, samples=2,
                    threads=1, checkpoint_every=1)
    whole = Simulation(cfg)
    whole.run()
    for k in range(3):
        assert torch.equal(whole.sync(whole.round + 1, k), whole.weights)
    assert_resume_equals_no_stop(cfg, whole, tmp_path / "r", stop_after=1)


@pytest.mark.parametrize("model", ["textbag", "transformer"])
def test_ef_identity_float64(model):
    from e3sfc.compress import ErrorFeedback
    net = build_model(model, (8,), 3, 0, vocab_size=30).double().eval()
    shape = synthetic_shape(net, (8,))
    ctx = Context(net, get_flat(net), shape, 3, client=0, generator=torch.Generator().manual_seed(0))
    comp = make_compressor("3sfc", samples=1, steps=1, max_iter=4)
    ef = ErrorFeedback()
    ef.residuals[0] = torch.randn(ctx.num_params, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    tau = ef.target(0, torch.randn(ctx.num_params, dtype=torch.float64, generator=torch.Generator().manual_seed(4)))
    payload, stats = comp.compress(tau, ctx)
    decoded = comp.decompress(comp.decode(comp.encode(payload), ctx), ctx)
    ef.update(0, tau, decoded)
    torch.testing.assert_close(decoded + ef.residuals[0], tau, rtol=0, atol=1e-12)
    e2, t2 = float(ef.residuals[0] @ ef.residuals[0]), float(tau @ tau)
    assert e2 == pytest.approx(t2 * (1 - stats["cosine"] ** 2), rel=1e-6)


@pytest.mark.parametrize("dataset", ["agnews", "imdb", "sogou"])
@pytest.mark.parametrize("model", ["textbag", "transformer"])
def test_every_dataset_with_every_model_runs_e3sfc_with_exact_bytes(tmp_path, dataset, model):
    root = write_imdb(tmp_path / "d", n=12) if dataset == "imdb" else \
        write_csv(tmp_path / "d", 4 if dataset == "agnews" else 5, n_train=60, n_test=20)
    cfg = RunConfig(dataset=dataset, data_dir=str(root), model=model, method="e3sfc", clients=2, rounds=2,
                    max_len=12, steps=1, max_iter=3, threads=1)
    sim = Simulation(cfg)
    sim.run()
    up = sim.server.compressor.payload_bytes(sim.server.context(0, None))
    d = int(np.prod(sim.feature_shape))
    assert up == 4 * (d + sim.data.num_classes + 1) + 5 + (2 + 4 * (1 + len(sim.feature_shape))) + (2 + 8) + 2
    assert [r["uplink_bytes"] for r in sim.metrics] == [2 * up, 2 * up]
    for k in range(2):
        assert torch.equal(sim.sync(sim.round + 1, k), sim.weights)


def test_download_checks_the_published_md5(tmp_path, monkeypatch):
    """A missing dataset is downloaded from its source (a file:// URL here) and kept only when its MD5
    matches; a mismatch keeps nothing and says which sum it got."""
    import hashlib

    from e3sfc.data.sources import Remote, Source
    src_dir = write_csv(tmp_path / "published", 4)
    md5 = {n: hashlib.md5((src_dir / n).read_bytes()).hexdigest() for n in ("train.csv", "test.csv")}
    monkeypatch.delenv("E3SFC_NO_DOWNLOAD", raising=False)
    good = Source("agnews", ("train.csv", "test.csv"), tuple(
        Remote((src_dir / n).as_uri(), "md5:" + md5[n]) for n in ("train.csv", "test.csv")))
    monkeypatch.setitem(textdata.TEXT_SOURCES, "agnews", (good, 4))
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl2").mkdir()
    d = load_dataset("agnews", str(tmp_path / "dl"))
    assert len(d.train_y) == 240 and (tmp_path / "dl" / "agnews" / "train.csv").is_file()
    bad = Source("agnews", ("train.csv", "test.csv"), (Remote((src_dir / "train.csv").as_uri(), "md5:" + "0" * 32),))
    monkeypatch.setitem(textdata.TEXT_SOURCES, "agnews", (bad, 4))
    with pytest.raises(DataError, match=f"has MD5 {md5['train.csv']}, expected 0000"):
        load_dataset("agnews", str(tmp_path / "dl2"))
    assert not (tmp_path / "dl2" / "agnews" / "train.csv").exists()


@pytest.mark.parametrize("model", ["textbag", "transformer"])
def test_every_method_runs_on_the_text_models(tmp_path, model):
    from e3sfc.compress import available_methods
    root = str(write_csv(tmp_path / "ag", 4, n_train=40, n_test=12))
    for method in available_methods():
        extra = {"synth_iters": 2} if method == "fedsynth" else {}
        cfg = RunConfig(dataset="agnews", data_dir=root, model=model, method=method, clients=2, rounds=1,
                        max_len=8, steps=1, max_iter=2, threads=1, **extra)
        sim = Simulation(cfg)
        sim.run()
        assert torch.isfinite(sim.weights).all(), method
        assert sim.metrics[-1]["uplink_bytes"] == 2 * sim.server.compressor.payload_bytes(sim.server.context(1, None))


@pytest.mark.slow
def test_text_on_the_flower_engine(tmp_path):
    pytest.importorskip("flwr")
    from e3sfc.flower import run_flower_simulation
    from e3sfc.io import read_jsonl
    root = str(write_csv(tmp_path / "ag", 4, n_train=60, n_test=20))
    cfg = RunConfig(dataset="agnews", data_dir=root, model="textbag", method="e3sfc", clients=2, rounds=2,
                    max_len=8, steps=1, max_iter=3, threads=1, engine="flower")
    run_flower_simulation(cfg, tmp_path / "run")
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert len(rows) == 2 and all(r["uplink_bytes"] > 0 for r in rows)


def test_holdout_is_taken_out_before_the_vocabulary(tmp_path):
    root = write_csv(tmp_path / "ag", 4, n_train=200, n_test=20)
    with open(root / "train.csv", "a", newline="", encoding="utf-8") as f:  # document 200: three words of its own
        csv.writer(f, quoting=csv.QUOTE_ALL).writerow([1, "Solo", "zzzuniqueword here"])
    full = load_dataset("agnews", str(root), max_len=8)

    def held_out(seed):  # the holdout's permutation: is document 200 in the held-out half?
        perm = np.random.default_rng(np.random.SeedSequence([seed, 0xDA7A])).permutation(201)
        return 200 in perm[int(round(201 * 0.5)):]
    out_seed = next(s for s in range(100) if held_out(s))
    in_seed = next(s for s in range(100) if not held_out(s))
    held = load_dataset("agnews", str(root), max_len=8, holdout=0.5, seed=out_seed)
    assert len(held.train_y) == 100 and len(held.test_y) == 101
    assert held.vocab_size == full.vocab_size - 3  # solo, zzzuniqueword, here: only in the held-out half
    assert load_dataset("agnews", str(root), max_len=8, holdout=0.5, seed=in_seed).vocab_size == full.vocab_size


def test_transformer_e3sfc_resume_equals_no_stop(tmp_path):
    root = str(write_csv(tmp_path / "ag", 4, n_train=40, n_test=12))
    cfg = RunConfig(dataset="agnews", data_dir=root, model="transformer", method="e3sfc", clients=2, rounds=3,
                    max_len=8, steps=1, max_iter=3, threads=1, checkpoint_every=1)
    whole = Simulation(cfg)
    whole.run()
    assert_resume_equals_no_stop(cfg, whole, tmp_path / "r", stop_after=1)
