"""Text classification: AG News and Sogou News (the char-CNN CSVs) and IMDB (the ``aclImdb`` folder).

Files are found like the image sets' (``--data-dir``, ``$E3SFC_DATA``, the user cache, each as is
or under a sub-folder named after the dataset or its archive): ``train.csv`` and ``test.csv``
(no header; columns: class index from 1, title, description; AG News: 4 classes, Sogou: 5) or
``aclImdb/{train,test}/{pos,neg}/*.txt`` (neg = 0, pos = 1). Files not found are downloaded from the
sources torchtext lists and checked against the MD5 sums it publishes (``E3SFC_NO_DOWNLOAD=1`` turns
that off); a file still missing, or a download that fails or does not match, is a one-line error.

Tokens: the ``basic_english`` rules (lowercase; ``'`` spaced out, ``"`` removed, ``.``, ``,``,
``(``, ``)``, ``!``, ``?`` spaced out, ``<br />``, ``;`` and ``:`` to a space; split on
whitespace). Vocabulary: the training split's tokens with at least ``min_freq`` occurrences, most
frequent first (ties alphabetical), at most ``vocab_size`` entries (0 = all) after two specials,
``<pad>`` = 0 and ``<unk>`` = 1. A document becomes its first ``max_len`` token ids, padded with 0.
The ids are cached (``.npz`` in the user cache, keyed by the files' sizes and times and these
settings; read back without pickle), so a second run does not tokenize again.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..io import atomic_write
from .sources import Remote, Source, cache_dir, candidate_roots, download

log = logging.getLogger(__name__)

PAD, UNK = 0, 1
TOKENIZER_VERSION = 1

_RULES = [(re.compile(p), r) for p, r in (
    (r"\'", " '  "), (r"\"", ""), (r"\.", " . "), (r"<br \/>", " "), (r",", " , "), (r"\(", " ( "),
    (r"\)", " ) "), (r"\!", " ! "), (r"\?", " ? "), (r"\;", " "), (r"\:", " "), (r"\s+", " "))]

# where torchtext's dataset sources download them, with the MD5 sums they publish
_AG = "https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/master/data/ag_news_csv/"
TEXT_SOURCES = {
    "agnews": (Source("agnews", ("train.csv", "test.csv"), (
        Remote(_AG + "train.csv", "md5:b1a00f826fdfbd249f79597b59e1dc12"),
        Remote(_AG + "test.csv", "md5:d52ea96a97a2d943681189a97654912d")), subdirs=("ag_news_csv",)), 4),
    "sogou": (Source("sogou", ("train.csv", "test.csv"), (
        Remote("https://drive.google.com/uc?export=download&id=0Bz8a_Dbh9QhbUkVqNEszd0RHaFE",
               "md5:0c1700ba70b73f964dd8de569d3fd03e", extract=True, name="sogou_news_csv.tar.gz"),),
        subdirs=("sogou_news_csv",)), 5),
    "imdb": (Source("imdb", ("aclImdb/train", "aclImdb/test"), (
        Remote("http://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
               "md5:7c2ac02c03563afcf9b574c7e56c153a", extract=True),)), 2),
}


def tokenize(line: str) -> list[str]:
    """``basic_english``: lowercase, the punctuation rules above, split on whitespace."""
    line = line.lower()
    for pattern, repl in _RULES:
        line = pattern.sub(repl, line)
    return line.split()


def _find(src: Source, data_dir: str | None, fetch: bool = True) -> Path:
    """The folder holding ``src``'s files; else, unless downloads are off, download them (checked
    against the published MD5) into ``--data-dir`` or the cache and look again."""
    roots = candidate_roots(src, data_dir)
    for root in roots:
        if all((root / f).exists() for f in src.files):
            return root
    if fetch and not os.environ.get("E3SFC_NO_DOWNLOAD"):
        target = (Path(data_dir) if data_dir is not None else cache_dir()) / src.name
        download(src, target)
        for root in (target, *(target / s for s in src.subdirs)):
            if all((root / f).exists() for f in src.files):
                return root
    where = ", ".join(str(r) for r in roots[:: 2 + len(src.subdirs)])
    raise DataError(f"dataset {src.name!r} not found (looked for {src.files[0]} and {src.files[1]} in {where}); "
                    f"put the files there or pass --data-dir (see the README, 'Text')")


def _read_csv(path: Path, classes: int) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    with open(path, "rb") as fb:  # the published files end with a newline: without one the file was cut
        fb.seek(0, os.SEEK_END)
        if fb.tell() and (fb.seek(-1, os.SEEK_END), fb.read(1))[1] != b"\n":
            raise DataError(f"{path}: truncated (the last line has no end)")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for n, row in enumerate(csv.reader(f, strict=True), 1):
                if len(row) < 2:
                    raise DataError(f"{path}:{n}: expected class, title, text; got {len(row)} field(s)")
                try:
                    c = int(row[0])
                except ValueError:
                    raise DataError(f"{path}:{n}: class {row[0][:20]!r} is not an integer") from None
                if not 1 <= c <= classes:
                    raise DataError(f"{path}:{n}: class {c} is outside 1..{classes}")
                labels.append(c - 1)
                texts.append(" ".join(row[1:]))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable CSV file ({exc})") from None
    if not texts:
        raise DataError(f"{path}: no documents")
    return texts, labels


def _read_imdb(part: Path) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    for label, name in ((0, "neg"), (1, "pos")):
        folder = part / name
        if not folder.is_dir():
            raise DataError(f"{folder}: missing (IMDB needs {part.name}/neg and {part.name}/pos)")
        for p in sorted(folder.glob("*.txt")):
            try:
                texts.append(p.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError) as exc:
                raise DataError(f"{p}: not a readable text file ({exc})") from None
            labels.append(label)
    if not texts:
        raise DataError(f"{part}: no documents in neg/ or pos/")
    return texts, labels


def build_vocab(docs: list[list[str]], min_freq: int = 1, vocab_size: int = 0) -> list[str]:
    """``<pad>``, ``<unk>``, then tokens seen at least ``min_freq`` times, most frequent first (ties
    alphabetical), at most ``vocab_size`` entries in all (0 = no cap)."""
    counts = Counter(t for d in docs for t in d)
    words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
    vocab = ["<pad>", "<unk>", *words]
    return vocab[:vocab_size] if vocab_size else vocab


def encode(docs: list[list[str]], vocab: list[str], max_len: int) -> np.ndarray:
    """(N, max_len) int32: each document's first ``max_len`` token ids, padded with ``<pad>``."""
    index = {w: i for i, w in enumerate(vocab)}
    out = np.zeros((len(docs), max_len), dtype=np.int32)
    for i, d in enumerate(docs):
        ids = [index.get(t, UNK) for t in d[:max_len]]
        out[i, :len(ids)] = ids
    return out


def load_text(name: str, data_dir: str | None, *, max_len: int = 128, min_freq: int = 1,
              vocab_size: int = 0, holdout: float = 0.0, seed: int = 0
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int]:
    """(train ids, train labels, test ids, test labels, classes, vocabulary size), from the cache
    when the same files and settings were read before. ``holdout > 0``: that share of the training
    documents (seeded, as for images) is the test set, taken out before the vocabulary is built."""
    src, classes = TEXT_SOURCES[name]
    root = _find(src, data_dir)
    paths = [root / f for f in src.files]
    stamp = [(str(p.resolve()), *_stat(p)) for p in paths]
    key = hashlib.sha256(json.dumps([name, stamp, max_len, min_freq, vocab_size, holdout, seed if holdout else 0,
                                     TOKENIZER_VERSION]).encode())
    cached = cache_dir() / "text" / f"{name}-{key.hexdigest()[:16]}.npz"
    if cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as z:
                log.info("dataset %s: token ids from %s", name, cached)
                return z["xtr"], z["ytr"], z["xte"], z["yte"], classes, int(z["vocab"])
        except (OSError, ValueError, KeyError) as exc:
            log.warning("dataset %s: ignoring an unreadable cache file %s (%s)", name, cached, exc)
    if name == "imdb":
        (tr_t, tr_y), (te_t, te_y) = _read_imdb(paths[0]), _read_imdb(paths[1])
    else:
        (tr_t, tr_y), (te_t, te_y) = _read_csv(paths[0], classes), _read_csv(paths[1], classes)
    if holdout > 0:  # the same seeded split as the image sets' holdout
        perm = np.random.default_rng(np.random.SeedSequence([seed, 0xDA7A])).permutation(len(tr_t))
        cut = int(round(len(tr_t) * (1 - holdout)))
        te_t, te_y = [tr_t[i] for i in perm[cut:]], [tr_y[i] for i in perm[cut:]]
        tr_t, tr_y = [tr_t[i] for i in perm[:cut]], [tr_y[i] for i in perm[:cut]]
    log.info("dataset %s: tokenizing %d + %d documents", name, len(tr_t), len(te_t))
    tr_docs, te_docs = [tokenize(t) for t in tr_t], [tokenize(t) for t in te_t]
    vocab = build_vocab(tr_docs, min_freq, vocab_size)
    xtr, xte = encode(tr_docs, vocab, max_len), encode(te_docs, vocab, max_len)
    ytr, yte = np.asarray(tr_y, dtype=np.int64), np.asarray(te_y, dtype=np.int64)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cached, lambda f: np.savez(f, xtr=xtr, ytr=ytr, xte=xte, yte=yte, vocab=len(vocab)), mode="wb")
    except OSError as exc:  # a read-only cache only costs the next run the tokenizing
        log.warning("dataset %s: could not cache token ids in %s (%s)", name, cached, exc)
    return xtr, ytr, xte, yte, classes, len(vocab)


def _stat(p: Path) -> tuple[int, int]:
    if p.is_dir():  # IMDB: the folder's documents
        files = [f for f in p.rglob("*.txt")]
        return len(files), int(max((os.stat(f).st_mtime_ns for f in files), default=0))
    st = os.stat(p)
    return st.st_size, st.st_mtime_ns
