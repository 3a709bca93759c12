"""Datasets (docs/design.md §1.5): readers, download with checksums, and partitioning.

``load_dataset`` returns a :class:`FedData` with float32 inputs standardised by
the training set's per-channel mean and std, and int64 labels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import protocol
from ..errors import ConfigError, DataError
from .partition import dirichlet_partition, iid_partition, partition
from .readers import read_cifar_batch, read_idx
from .sources import Remote, Source, is_folder, missing_folder, resolve
from .text import TEXT_SOURCES, load_text

log = logging.getLogger(__name__)

__all__ = [
    "FedData", "load_dataset", "available_datasets", "register_dataset", "locate", "EMNIST_SPLITS",
    "partition", "dirichlet_partition", "iid_partition", "read_idx", "read_cifar_batch",
]

IDX_FILES = (
    "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
)

#: EMNIST split -> number of classes (Cohen et al. 2017).
EMNIST_SPLITS = {"balanced": 47, "byclass": 62, "bymerge": 47, "digits": 10, "letters": 26, "mnist": 10}

_MNIST_SHA = (
    "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
)
_FMNIST_SHA = (
    "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
)
_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FMNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

SOURCES: dict[str, Source] = {
    "mnist": Source(
        "mnist", IDX_FILES,
        tuple(Remote(_MNIST_URL + f, s) for f, s in zip(IDX_FILES, _MNIST_SHA)),
    ),
    "fmnist": Source(
        "fmnist", IDX_FILES,
        tuple(Remote(_FMNIST_URL + f, s) for f, s in zip(IDX_FILES, _FMNIST_SHA)),
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        subdirs=("fashion-mnist",),
    ),
    "cifar10": Source(
        "cifar10",
        tuple(f"cifar-10-batches-py/{n}" for n in
              ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")),
        (Remote("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce", extract=True),),
    ),
    "cifar100": Source(
        "cifar100", ("cifar-100-python/train", "cifar-100-python/test"),
        (Remote("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7", extract=True),),
    ),
}


def _emnist_source(split: str) -> Source:
    files = tuple(
        f"emnist-{split}-{part}-{kind}-idx{3 if kind == 'images' else 1}-ubyte.gz"
        for part in ("train", "test") for kind in ("images", "labels")
    )
    # NIST ships EMNIST as one large zip without a published SHA-256: no automatic download.
    return Source("emnist", files, (), subdirs=("gzip",))


# the authors' input normalisation: CIFAR with fixed per-channel constants, the rest [0, 1] as read
AUTHORS_NORMALIZE = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}


@dataclass
class FedData:
    """A dataset in memory: standardised float32 inputs, int64 labels."""

    name: str
    train_x: torch.Tensor  # (N, C, H, W)
    train_y: torch.Tensor  # (N,)
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    vocab_size: int = 0    # text: token ids in train_x/test_x ((N, max_len) int64) index a vocabulary this size

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


def _check_pair(name: str, x: np.ndarray, y: np.ndarray, num_classes: int, split: str = "training",
                text: bool = False) -> np.ndarray:
    """A split's inputs and labels are usable: at least one sample, as many labels as inputs, labels a 1-D
    array of integers in 0..classes-1, inputs of a numeric dtype and finite (images: (N, C, H, W)). Returns
    the labels as int64."""
    x, y = np.asarray(x), np.asarray(y)
    what = "documents" if text else "images"
    if x.ndim < 1 or x.shape[0] == 0:
        raise DataError(f"dataset {name!r}: the {split} split holds no {what}; expected at least one sample")
    if not text and x.ndim != 4:
        raise DataError(f"dataset {name!r}: {split} {what} have shape {x.shape[1:]}; expected (channels, height, "
                        "width) each")
    if y.ndim != 1:
        raise DataError(f"dataset {name!r}: {split} labels have shape {y.shape}; expected one label per sample "
                        "(a 1-D array)")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"dataset {name!r}: {x.shape[0]} {split} {what} but {y.shape[0]} labels")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise DataError(f"dataset {name!r}: {split} {what} are {x.dtype}; expected integer or float pixels")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise DataError(f"dataset {name!r}: {split} {what} hold non-finite values (NaN or inf); expected finite "
                        "pixels")
    if np.issubdtype(y.dtype, np.floating):
        if not (np.isfinite(y).all() and (y == np.round(y)).all()):
            bad = float(y[~(np.isfinite(y) & (y == np.round(y)))][0])
            raise DataError(f"dataset {name!r}: {split} label {bad!r} is not an integer; expected integer labels "
                            f"in 0..{num_classes - 1}")
    elif not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"dataset {name!r}: {split} labels are {y.dtype}; expected integer labels")
    if y.min() < 0 or y.max() >= num_classes:
        raise DataError(f"dataset {name!r}: labels outside 0..{num_classes - 1}")
    return y.astype(np.int64)


def _load_idx(root, files, name) -> tuple[np.ndarray, ...]:
    arrays = [read_idx(root / f) for f in files]
    xtr, ytr, xte, yte = arrays
    for x in (xtr, xte):
        if x.ndim != 3:
            raise DataError(f"dataset {name!r}: image file must have 3 dimensions, got {x.shape}")
        if x.shape[1:] != (28, 28):
            raise DataError(f"dataset {name!r}: images are {x.shape[1]}x{x.shape[2]}; expected 28x28 (an IDX image "
                            "file of the MNIST family)")
    for y in (ytr, yte):
        if y.ndim != 1:
            raise DataError(f"dataset {name!r}: label file has shape {y.shape}; expected 1 dimension (one label "
                            "per image)")
    return xtr[:, None], ytr.astype(np.int64), xte[:, None], yte.astype(np.int64)


def _mnist_like(name: str) -> Callable[..., tuple]:
    def load(data_dir, emnist_split):
        root = resolve(SOURCES[name], data_dir)
        xtr, ytr, xte, yte = _load_idx(root, IDX_FILES, name)
        return xtr, ytr, xte, yte, 10, 255.0
    return load


def _rgb32(name: str) -> Callable[..., tuple]:
    """``name`` (28x28 grey) padded with 2 black pixels a side to 32x32 and repeated to 3 channels: a
    stand-in for CIFAR-sized inputs (3x32x32) built from files this machine has."""
    inner = _mnist_like(name)

    def load(data_dir, emnist_split):
        xtr, ytr, xte, yte, classes, scale = inner(data_dir, emnist_split)
        xtr, xte = (np.repeat(np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2))), 3, axis=1) for x in (xtr, xte))
        return xtr, ytr, xte, yte, classes, scale
    return load


# a dataset built from another's files: its name -> the files' source
DERIVED = {"fmnist-rgb32": "fmnist"}


def _emnist(data_dir, emnist_split):
    src = _emnist_source(emnist_split)
    root = resolve(src, data_dir)
    xtr, ytr, xte, yte = _load_idx(root, src.files, "emnist")
    # EMNIST images are stored transposed relative to MNIST.
    xtr, xte = xtr.transpose(0, 1, 3, 2), xte.transpose(0, 1, 3, 2)
    if emnist_split == "letters":  # labels 1..26
        ytr, yte = ytr - 1, yte - 1
    return xtr, ytr, xte, yte, EMNIST_SPLITS[emnist_split], 255.0


def _cifar(name: str, train_files, test_files, key: bytes, classes: int):
    def load(data_dir, emnist_split):
        src = SOURCES[name]
        root = resolve(src, data_dir)
        tr = [read_cifar_batch(root / f, key) for f in train_files]
        te = [read_cifar_batch(root / f, key) for f in test_files]
        xtr, ytr = np.concatenate([a for a, _ in tr]), np.concatenate([b for _, b in tr])
        xte, yte = np.concatenate([a for a, _ in te]), np.concatenate([b for _, b in te])
        return xtr, ytr, xte, yte, classes, 255.0
    return load


def _digits(data_dir, emnist_split):
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover
        raise DataError("dataset 'digits' needs scikit-learn: pip install 'scikit-learn>=1.1'") from None
    d = load_digits()
    x = d.images.astype(np.float32)[:, None]  # (1797, 1, 8, 8), values 0..16
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(y))  # fixed split: no official test set
    cut = int(0.8 * len(y))
    tr, te = perm[:cut], perm[cut:]
    return x[tr], y[tr], x[te], y[te], 10, 16.0


_LOADERS: dict[str, Callable[..., tuple]] = {
    "mnist": _mnist_like("mnist"),
    "fmnist": _mnist_like("fmnist"),
    "fmnist-rgb32": _rgb32("fmnist"),
    "emnist": _emnist,
    "cifar10": _cifar("cifar10", SOURCES["cifar10"].files[:5], SOURCES["cifar10"].files[5:], b"labels", 10),
    "cifar100": _cifar("cifar100", SOURCES["cifar100"].files[:1], SOURCES["cifar100"].files[1:], b"fine_labels", 100),
    "digits": _digits,
}


def register_dataset(name: str, train, test, num_classes: int) -> None:
    """Make ``--dataset name`` the given torch ``Dataset``s (items (image tensor (C, H, W), int label)).
    They are read into memory at load time and standardised like every image set."""
    if name in _LOADERS or name in TEXT_SOURCES:
        raise ValueError(f"dataset {name!r} is registered already")

    def load(data_dir, emnist_split):
        def arrays(ds):
            if len(ds) == 0:
                raise DataError(f"dataset {name!r}: an empty split")
            xs, ys = zip(*(ds[i] for i in range(len(ds))))
            return (torch.stack([torch.as_tensor(x, dtype=torch.float32) for x in xs]).numpy(),
                    np.asarray([float(y) if isinstance(y, float) else int(y) for y in ys]))  # 3.7: refused
        (xtr, ytr), (xte, yte) = arrays(train), arrays(test)
        if xtr.ndim != 4:
            raise DataError(f"dataset {name!r}: items must be (C, H, W) tensors, got {xtr.shape[1:]}")
        return xtr, ytr, xte, yte, num_classes, 1.0

    _LOADERS[name] = load


def locate(name: str, data_dir: str | None = None, emnist_split: str = "balanced") -> str:
    """Where ``name``'s files are (found, or downloaded and checked, as :func:`load_dataset` does)."""
    if name in TEXT_SOURCES:
        from .text import _find
        return str(_find(TEXT_SOURCES[name][0], data_dir))
    if name == "digits":
        return "scikit-learn's bundled copy (sklearn.datasets.load_digits)"
    if name == "emnist":
        return str(resolve(_emnist_source(emnist_split), data_dir))
    if name in SOURCES or name in DERIVED:
        return str(resolve(SOURCES[DERIVED.get(name, name)], data_dir))
    if name in _LOADERS:
        return "memory (registered with e3sfc.register_dataset)"
    raise ConfigError(f"--dataset: {name!r} is not allowed; expected one of {', '.join(available_datasets())}")


def available_datasets() -> tuple[str, ...]:
    return (*_LOADERS, *TEXT_SOURCES)


def is_text(name: str) -> bool:
    return name in TEXT_SOURCES


def load_dataset(
    name: str,
    data_dir: str | None = None,
    *,
    emnist_split: str = "balanced",
    holdout: float = 0.0,
    train_subset: int = 0,
    test_subset: int = 0,
    seed: int = 0,
    scaling: str = "standard",
    max_len: int = 128,
    min_freq: int = 1,
    vocab_size: int = 0,
) -> FedData:
    """Load ``name`` and scale its inputs.

    ``holdout > 0`` follows the authors' protocol: that fraction of the training
    set (seeded) becomes the test set and the official test split is unused.
    ``train_subset`` / ``test_subset`` keep a seeded random subset (0 = all).
    ``scaling``: ``standard`` (per-channel mean and std of the training set) or ``authors``
    (pixels in [0, 1], CIFAR normalised with the authors' fixed constants; EMNIST then takes
    50,000 / 10,000 images from one permutation of its training split and reports 62 classes,
    as their code does).
    """
    if name not in _LOADERS and name not in TEXT_SOURCES:
        raise ConfigError(f"--dataset: {name!r} is not allowed; expected one of {', '.join(available_datasets())}")
    if data_dir is not None and not is_folder(Path(data_dir)):  # also for a dataset that reads no files
        raise missing_folder(data_dir)
    vocab = 0
    if name in TEXT_SOURCES:  # token ids (N, max_len); no input scaling
        xtr, ytr, xte, yte, classes, vocab = load_text(name, data_dir, max_len=max_len, min_freq=min_freq,
                                                       vocab_size=vocab_size, holdout=holdout, seed=seed)
        scale = None
        holdout = 0.0  # done, before the vocabulary
    else:
        xtr, ytr, xte, yte, classes, scale = _LOADERS[name](data_dir, emnist_split)
    ytr = _check_pair(name, xtr, ytr, classes, "training", text=scale is None)
    yte = _check_pair(name, xte, yte, classes, "test", text=scale is None)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xDA7A]))
    if scaling == "authors" and name == "emnist":
        perm = rng.permutation(len(ytr))
        n_train, n_test = protocol.EMNIST_SPLIT
        xte, yte = xtr[perm[n_train:n_train + n_test]], ytr[perm[n_train:n_train + n_test]]
        xtr, ytr = xtr[perm[:n_train]], ytr[perm[:n_train]]
        classes = protocol.EMNIST_OUTPUTS
    elif holdout > 0:
        perm = rng.permutation(len(ytr))
        cut = int(round(len(ytr) * (1 - holdout)))
        xte, yte = xtr[perm[cut:]], ytr[perm[cut:]]
        xtr, ytr = xtr[perm[:cut]], ytr[perm[:cut]]
    if train_subset and train_subset < len(ytr):
        keep = np.sort(rng.choice(len(ytr), train_subset, replace=False))
        xtr, ytr = xtr[keep], ytr[keep]
    if test_subset and test_subset < len(yte):
        keep = np.sort(rng.choice(len(yte), test_subset, replace=False))
        xte, yte = xte[keep], yte[keep]
    if len(ytr) == 0 or len(yte) == 0:
        raise DataError(f"dataset {name!r}: empty training or test split")
    if scale is None:
        log.info("dataset %s: %d train, %d test documents, %d tokens each, vocabulary %d, %d classes",
                 name, len(ytr), len(yte), xtr.shape[1], vocab, classes)
        return FedData(name=name, train_x=torch.from_numpy(np.ascontiguousarray(xtr, dtype=np.int64)),
                       train_y=torch.from_numpy(np.ascontiguousarray(ytr, dtype=np.int64)),
                       test_x=torch.from_numpy(np.ascontiguousarray(xte, dtype=np.int64)),
                       test_y=torch.from_numpy(np.ascontiguousarray(yte, dtype=np.int64)),
                       num_classes=classes, vocab_size=vocab)
    # in place, the same float32 operations as (x / scale - mean) / std, bit for bit (tested)
    xtr_f = torch.from_numpy(np.ascontiguousarray(xtr)).to(torch.float32).div_(scale)
    xte_f = torch.from_numpy(np.ascontiguousarray(xte)).to(torch.float32).div_(scale)
    if scaling == "authors":
        m, sd = AUTHORS_NORMALIZE.get(name, ((0.0,), (1.0,)))
        mean, std = torch.tensor(m).view(1, -1, 1, 1), torch.tensor(sd).view(1, -1, 1, 1)
    else:
        mean = xtr_f.mean(dim=(0, 2, 3), keepdim=True)
        std = xtr_f.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    log.info("dataset %s: %d train, %d test, shape %s, %d classes",
             name, len(ytr), len(yte), tuple(xtr.shape[1:]), classes)
    return FedData(
        name=name,
        train_x=xtr_f.sub_(mean).div_(std),
        train_y=torch.from_numpy(np.ascontiguousarray(ytr, dtype=np.int64)),
        test_x=xte_f.sub_(mean).div_(std),
        test_y=torch.from_numpy(np.ascontiguousarray(yte, dtype=np.int64)),
        num_classes=classes,
    )
