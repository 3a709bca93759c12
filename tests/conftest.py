from __future__ import annotations

import gzip
import os
import re
import struct
from pathlib import Path

import numpy as np
import pytest

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
CLI_FAST = ["--dataset", "digits", "--clients", "3", "--rounds", "2", "--batch-size", "32"]  # a quick CLI run


PROGRESS = re.compile(r"^round \d+/\d+: accuracy ")  # a run's progress line where stderr is no terminal


def one_line_error(capsys) -> str:
    """What the CLI printed on stderr besides progress lines (of the runs a test made before), which must
    be exactly one line."""
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not PROGRESS.match(line)]
    assert len(err) == 1, err
    return err[0]


@pytest.fixture(autouse=True)
def _no_network(monkeypatch, tmp_path_factory):
    """Tests never touch the network and never read the user's cache."""
    monkeypatch.setenv("E3SFC_NO_DOWNLOAD", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("E3SFC_DATA", raising=False)


def write_idx(path: Path, arr: np.ndarray, gz: bool = True) -> Path:
    """Write ``arr`` (uint8) as an IDX file, exactly the MNIST format."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    raw = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)
    return path


def write_mnist_like(root: Path, n_train: int = 120, n_test: int = 40, classes: int = 10,
                     prefix: str = "", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    names = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte.gz": np.arange(n_train) % classes,
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte.gz": np.arange(n_test) % classes,
    }
    for name, arr in names.items():
        write_idx(root / (prefix + name), arr)
    return root


def fmnist_available() -> bool:
    return all((FMNIST_DIR / f).is_file() for f in (
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"))


def require_fmnist() -> None:
    if not fmnist_available():
        if os.environ.get("CI"):
            pytest.fail("real Fashion-MNIST must be installed in CI (make data)")
        pytest.skip("real Fashion-MNIST not installed (run `make data`)")


def assert_resume_equals_no_stop(cfg, whole, out_dir: Path, stop_after: int) -> None:
    """Run ``cfg`` into ``out_dir``, stop after round ``stop_after``, resume from its checkpoint in a new
    Simulation: same final weights and the same metrics (timings aside) as ``whole``, the run that never
    stopped."""
    import torch

    from e3sfc.federated import Simulation

    Simulation(cfg, out_dir=out_dir).run(stop_after=stop_after)
    resumed = Simulation.resume(out_dir)
    resumed.run()
    assert torch.equal(resumed.weights, whole.weights)
    strip = [{k: v for k, v in r.items() if "seconds" not in k} for r in whole.metrics]
    assert [{k: v for k, v in r.items() if "seconds" not in k} for r in resumed.metrics] == strip


def ef_round_trip(comp, ctx):
    """A float64 error-feedback round through the wire: tau = e + delta compressed, encoded, decoded;
    asserts decoded + new residual == tau exactly (to 1e-15); returns (tau, decoded, stats)."""
    import torch

    from e3sfc.compress import ErrorFeedback

    ef = ErrorFeedback()
    ef.residuals[0] = torch.randn(ctx.num_params, dtype=torch.float64) * 1e-3
    tau = ef.target(0, torch.randn(ctx.num_params, dtype=torch.float64) * 1e-2)
    payload, stats = comp.compress(tau, ctx)
    decoded = comp.decompress(comp.decode(comp.encode(payload), ctx), ctx)
    ef.update(0, tau, decoded)
    torch.testing.assert_close(decoded + ef.residuals[0], tau, rtol=0, atol=1e-15)
    return tau, decoded, stats
