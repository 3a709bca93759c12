from __future__ import annotations

import gzip
import hashlib
import pickle

import numpy as np
import pytest
import torch

from conftest import write_idx, write_mnist_like
from e3sfc.data import load_dataset, locate, read_cifar_batch, read_idx
from e3sfc.data.sources import Remote, Source, download, resolve
from e3sfc.errors import DataError


def test_idx_round_trip_gz_and_raw(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a.gz", a)), a)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a", a, gz=False)), a)


def test_gzipped_idx_is_cached_decoded_and_checksummed(tmp_path, monkeypatch):
    """The second read of a .gz comes from the cache (no decompression); a cache entry whose numbers
    were changed fails its checksum and is replaced by a fresh decode; load_dataset's float path gives
    the same bits as (x / 255 - mean) / std computed out of place."""
    from e3sfc.data import readers

    a = np.random.default_rng(0).integers(0, 255, (6, 4, 4), dtype=np.uint8)
    p = write_idx(tmp_path / "a.gz", a)
    assert np.array_equal(read_idx(p), a)
    cached = readers._cache_path(p)
    assert cached.is_file() and cached.with_suffix(".b2").is_file()
    decodes, real = [], readers._read_bytes
    monkeypatch.setattr(readers, "_read_bytes", lambda path: decodes.append(path) or real(path))
    assert np.array_equal(read_idx(p), a) and decodes == []  # from the cache
    bad = a.copy()
    bad[0, 0, 0] ^= 1
    np.save(cached, bad)
    assert np.array_equal(read_idx(p), a) and decodes == [p]  # checksum mismatch: decoded again, rewritten
    assert np.array_equal(np.load(cached), a)


def test_idx_truncated_gives_one_clear_error(tmp_path):
    p = write_idx(tmp_path / "x", np.zeros((5, 4, 4)), gz=False)
    p.write_bytes(p.read_bytes()[:-7])
    with pytest.raises(DataError, match="truncated: header says 80 data bytes, found 73"):
        read_idx(p)


def test_idx_corrupt_gzip_and_bad_magic(tmp_path):
    p = write_idx(tmp_path / "x.gz", np.zeros((50, 4, 4)))
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    with pytest.raises(DataError, match="corrupt or truncated"):
        read_idx(p)
    q = tmp_path / "y"
    q.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match="bad magic"):
        read_idx(q)


def test_load_mnist_format_from_data_dir(tmp_path):
    write_mnist_like(tmp_path, n_train=100, n_test=30)
    d = load_dataset("mnist", str(tmp_path))
    assert d.train_x.shape == (100, 1, 28, 28) and d.test_x.shape == (30, 1, 28, 28)
    assert d.num_classes == 10 and d.train_y.dtype == torch.int64
    # standardised with the training statistics
    assert abs(float(d.train_x.mean())) < 1e-4 and abs(float(d.train_x.std()) - 1) < 1e-2


def test_fmnist_rgb32_is_fmnist_padded_to_three_channels(tmp_path):
    """The stand-in for CIFAR-sized inputs: the same images, a 2-pixel black border, three equal channels."""
    write_mnist_like(tmp_path, n_train=50, n_test=20)
    grey = load_dataset("fmnist", str(tmp_path), scaling="authors")  # [0, 1] pixels: no statistics to compare
    rgb = load_dataset("fmnist-rgb32", str(tmp_path), scaling="authors")
    assert rgb.train_x.shape == (50, 3, 32, 32) and rgb.test_x.shape == (20, 3, 32, 32)
    assert torch.equal(rgb.train_y, grey.train_y) and torch.equal(rgb.test_y, grey.test_y)
    for c in range(3):
        assert torch.equal(rgb.train_x[:, c, 2:30, 2:30], grey.train_x[:, 0])
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (rgb.test_x[:, :, border] == 0).all()
    assert locate("fmnist-rgb32", str(tmp_path)) == locate("fmnist", str(tmp_path))


def test_subdir_named_after_dataset_is_found(tmp_path):
    write_mnist_like(tmp_path / "mnist")
    assert load_dataset("mnist", str(tmp_path)).train_x.shape[0] == 120


def test_holdout_protocol_takes_test_from_train(tmp_path):
    write_mnist_like(tmp_path, n_train=100, n_test=30)
    d = load_dataset("mnist", str(tmp_path), holdout=0.2, seed=1)
    assert d.train_x.shape[0] == 80 and d.test_x.shape[0] == 20


def test_emnist_letters_split_and_transpose(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (6, 28, 28))
    for part in ("train", "test"):
        write_idx(tmp_path / f"emnist-letters-{part}-images-idx3-ubyte.gz", img)
        write_idx(tmp_path / f"emnist-letters-{part}-labels-idx1-ubyte.gz", np.array([1, 2, 3, 24, 25, 26]))
    d = load_dataset("emnist", str(tmp_path), emnist_split="letters")
    assert d.num_classes == 26
    assert d.train_y.tolist() == [0, 1, 2, 23, 24, 25]
    # stored transposed: reading must undo it (compare un-standardised order of pixels)
    flat = d.train_x[0, 0]
    ref = torch.from_numpy(img[0].T.astype(np.float32))
    assert torch.corrcoef(torch.stack([flat.flatten(), ref.flatten()]))[0, 1] > 0.999


def _write_cifar(path, n, key, classes, seed=0):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                     key: list(np.arange(n) % classes)}, f)


def test_cifar10_and_cifar100_pickles(tmp_path):
    for i in range(1, 6):
        _write_cifar(tmp_path / "cifar-10-batches-py" / f"data_batch_{i}", 20, b"labels", 10, i)
    _write_cifar(tmp_path / "cifar-10-batches-py" / "test_batch", 10, b"labels", 10)
    d = load_dataset("cifar10", str(tmp_path))
    assert d.train_x.shape == (100, 3, 32, 32) and d.num_classes == 10
    _write_cifar(tmp_path / "cifar-100-python" / "train", 200, b"fine_labels", 100)
    _write_cifar(tmp_path / "cifar-100-python" / "test", 100, b"fine_labels", 100)
    d = load_dataset("cifar100", str(tmp_path))
    assert d.test_x.shape == (100, 3, 32, 32) and d.num_classes == 100


def test_cifar_corrupt_pickle(tmp_path):
    p = tmp_path / "b"
    p.write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="corrupt or truncated"):
        read_cifar_batch(p, b"labels")


def test_digits_ships_with_sklearn():
    d = load_dataset("digits")
    assert d.input_shape == (1, 8, 8) and d.num_classes == 10
    assert len(d.train_y) + len(d.test_y) == 1797


def test_missing_data_dir_and_missing_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("mnist", str(tmp_path / "nope"))
    with pytest.raises(DataError, match="not found"):
        load_dataset("mnist", str(tmp_path))


def test_download_checks_sha256_and_keeps_nothing_on_mismatch(tmp_path, monkeypatch):
    monkeypatch.delenv("E3SFC_NO_DOWNLOAD")
    payload = gzip.compress(b"hello")
    srcfile = tmp_path / "remote" / "f.gz"
    srcfile.parent.mkdir()
    srcfile.write_bytes(payload)
    good = hashlib.sha256(payload).hexdigest()
    src = Source("toy", ("f.gz",), (Remote(srcfile.as_uri(), good),))
    (tmp_path / "dl").mkdir()
    root = resolve(src, str(tmp_path / "dl"))
    assert (root / "f.gz").read_bytes() == payload
    bad = Source("toy2", ("f.gz",), (Remote(srcfile.as_uri(), "0" * 64),))
    with pytest.raises(DataError, match="SHA-256"):
        download(bad, tmp_path / "dl2")
    assert list((tmp_path / "dl2").iterdir()) == []


def test_standardisation_in_place_equals_the_out_of_place_formula(tmp_path):
    root = write_mnist_like(tmp_path / "m", n_train=300, n_test=50)
    d = load_dataset("mnist", str(root))
    x = torch.from_numpy(read_idx(root / "train-images-idx3-ubyte.gz")[:, None].astype(np.float32) / 255.0)
    mean, std = x.mean(dim=(0, 2, 3), keepdim=True), x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    assert torch.equal(d.train_x, (x - mean) / std)


# ---- data validation when loading (issue 32 item 4): one line naming the problem, never a fallback ----

def _mnist_with(root, **replace):
    write_mnist_like(root, n_train=30, n_test=10)
    for name, arr in replace.items():
        write_idx(root / name, arr)
    return root


@pytest.mark.parametrize("name,arr,needle", [
    ("train-labels-idx1-ubyte.gz", np.zeros((30, 2)), "label file has shape (30, 2); expected 1 dimension"),
    ("train-images-idx3-ubyte.gz", np.zeros((30, 5, 5)), "images are 5x5; expected 28x28"),
    ("train-images-idx3-ubyte.gz", np.zeros((0, 28, 28)), "the training split holds no images"),
    ("train-labels-idx1-ubyte.gz", np.zeros(0), "30 training images but 0 labels"),
    ("t10k-labels-idx1-ubyte.gz", np.full(10, 12), "labels outside 0..9"),
])
def test_bad_idx_contents_are_refused(tmp_path, name, arr, needle):
    root = _mnist_with(tmp_path / "d", **{name: arr})
    with pytest.raises(DataError, match=None) as e:
        load_dataset("mnist", str(root))
    assert needle in str(e.value)


def test_registered_dataset_with_nan_pixels_or_float_labels():
    from e3sfc.data import register_dataset
    from e3sfc.data import _LOADERS

    x = torch.zeros(4, 1, 8, 8)
    good = [(x[i], i % 2) for i in range(4)]
    nan = [(x[i] + float("nan"), i % 2) for i in range(4)]
    inf = [(x[i] + float("inf"), i % 2) for i in range(4)]
    frac = [(x[i], 3.7 if i == 0 else 1) for i in range(4)]
    for tag, train, needle in (("nan", nan, "non-finite values"), ("inf", inf, "non-finite values"),
                               ("frac", frac, "label 3.7 is not an integer")):
        name = f"bad-{tag}"
        register_dataset(name, train, good, num_classes=10)
        try:
            with pytest.raises(DataError) as e:
                load_dataset(name)
            assert needle in str(e.value)
        finally:
            _LOADERS.pop(name)


def test_data_dir_that_is_empty_or_holds_a_folder_is_an_error(tmp_path, monkeypatch):
    system = write_mnist_like(tmp_path / "system")  # another copy that must not be used
    monkeypatch.setenv("E3SFC_DATA", str(system))
    assert len(load_dataset("mnist").train_y) == 120  # found without --data-dir
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as e:
        load_dataset("mnist", str(empty))
    assert f"--data-dir: dataset 'mnist' not found in {str(empty)!r}" in str(e.value)
    holey = write_mnist_like(tmp_path / "holey")
    (holey / "t10k-labels-idx1-ubyte.gz").unlink()
    (holey / "t10k-labels-idx1-ubyte.gz").mkdir()
    with pytest.raises(DataError) as e:
        load_dataset("mnist", str(holey))
    assert "t10k-labels-idx1-ubyte.gz is a folder" in str(e.value)


def test_bad_data_through_the_cli_leaves_nothing(tmp_path, capsys):
    from conftest import one_line_error
    from e3sfc.cli import main

    root = _mnist_with(tmp_path / "d", **{"train-images-idx3-ubyte.gz": np.zeros((30, 5, 5))})
    out = tmp_path / "runs" / "r"
    assert main(["run", "--dataset", "mnist", "--data-dir", str(root), "--clients", "2", "--rounds", "1",
                 "--out", str(out)]) == 2
    assert "images are 5x5; expected 28x28" in one_line_error(capsys)
    assert not (tmp_path / "runs").exists()
