"""Every bad input a user or an attacker can hand the CLI ends in one line and exit 2, nothing half-written;
checkpoints cannot run code; run folders have one writer."""

from __future__ import annotations

import io
import pickle
import struct

import pytest
import torch

from conftest import CLI_FAST as FAST, one_line_error as _err
from e3sfc import wire
from e3sfc.cli import main
from e3sfc.errors import DataError, PayloadError
from e3sfc.federated.simulator import locked_run_dir
from e3sfc.io import read_jsonl



@pytest.mark.parametrize("out,needle", [
    ("/proc/e3sfc-x", "--out: cannot create a run folder at '/proc/e3sfc-x'"),
    ("/sys/e3sfc-x", "--out: cannot create a run folder at '/sys/e3sfc-x'"),
    ("FILE", "is a file; expected a folder"),
    ("FILE/under", "--out: cannot create a run folder"),
])
def test_bad_out(out, needle, tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("keep me")
    out = out.replace("FILE", str(f))
    assert main(["run", *FAST, "--out", out]) == 2
    assert needle in _err(capsys)
    assert f.read_text() == "keep me"


@pytest.mark.parametrize("argv,needle", [
    (["--threads", "100000"], "--threads: 100000 is not allowed; expected an integer in 0.."),
    (["--method", "3sfc", "--samples", "1000000000", "--max-samples", "1000000000"],
     "--samples: this run needs about"),
    (["--method", "topk", "--memory-test"], "--clients: this run needs about"),
])
def test_impossible_sizes_are_refused_before_allocating(argv, needle, tmp_path, capsys, monkeypatch):
    if "--memory-test" in argv:  # a machine with 100 kB free: 3 clients' EF residuals cannot fit
        argv = argv[:-1]
        monkeypatch.setattr("e3sfc.federated.estimate.available_memory", lambda: 100_000)
    out = tmp_path / "r"
    assert main(["run", *FAST, "--out", str(out), *argv]) == 2
    assert needle in _err(capsys)
    assert not out.exists()  # nothing left behind


@pytest.mark.parametrize("argv,needle", [
    (["--method", "topk", "--value-bits", "7"], "--value-bits: 7 is not allowed; expected one of 32, 16, 8"),
    (["--method", "fedavg", "--index-coding", "golomb"],
     "--index-coding: 'golomb' is not allowed; expected the default"),
    (["--method", "topk", "--index-coding", "rle"],
     "--index-coding: 'rle' is not allowed; expected one of int32, golomb"),
    (["--method", "stc", "--value-bits", "8"],
     "--value-bits: 8 is not allowed; expected the default with --method stc"),
])
def test_bad_sparse_coding_settings(argv, needle, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["run", *FAST, "--out", str(out), *argv]) == 2
    assert needle in _err(capsys)
    assert not out.exists()


def test_binary_toml(tmp_path, capsys):
    p = tmp_path / "c.toml"
    p.write_bytes(b"\x00\xff\xfe\x89PNG")
    assert main(["run", "--config", str(p)]) == 2
    assert "--config" in _err(capsys)


def test_idx_dimensions_that_overflow(tmp_path):
    raw = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2 ** 32 - 1, 2 ** 32 - 1, 2 ** 32 - 1) + b"\x00" * 16
    p = tmp_path / "x-idx3-ubyte"
    p.write_bytes(raw)
    from e3sfc.data import read_idx

    with pytest.raises(DataError, match="truncated"):
        read_idx(p)


def test_wire_dimensions_whose_product_wraps_around():
    with pytest.raises(PayloadError, match="truncated"):
        wire.decode(bytes.fromhex("45330100010503000000800000008004000000"))


def _finished_run(tmp_path, name="run", *extra):
    out = tmp_path / name
    assert main(["run", *FAST, "--rounds", "3", "--checkpoint-every", "1", "--out", str(out), *extra]) == 0
    (out / "summary.json").unlink()
    return out


class _Boom:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.write_text, (pathlib.Path(self.path), "pwned"))


def test_resume_never_runs_code_from_a_checkpoint(tmp_path, capsys):
    out = _finished_run(tmp_path)
    marker = tmp_path / "marker"
    with open(out / "checkpoint.pt", "wb") as f:
        torch.save({"round": 1, "x": _Boom(str(marker))}, f)
    assert main(["run", "--resume", str(out)]) == 2
    assert "is not a readable e3sfc checkpoint" in _err(capsys)
    assert not marker.exists()
    pickle.dump(_Boom(str(marker)), open(out / "checkpoint.pt", "wb"))  # a bare pickle too
    assert main(["run", "--resume", str(out)]) == 2
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["random", "empty", "truncated"])
def test_resume_corrupt_checkpoint(damage, tmp_path, capsys):
    out = _finished_run(tmp_path)
    ck = out / "checkpoint.pt"
    blob = ck.read_bytes()
    ck.write_bytes({"random": bytes(range(256)) * 40, "empty": b"", "truncated": blob[: len(blob) // 2]}[damage])
    metrics = (out / "metrics.jsonl").read_bytes()
    assert main(["run", "--resume", str(out)]) == 2
    assert "checkpoint" in _err(capsys)
    assert (out / "metrics.jsonl").read_bytes() == metrics  # nothing written


def test_resume_checkpoint_of_another_model(tmp_path, capsys):
    mine = _finished_run(tmp_path, "mlp")
    other = _finished_run(tmp_path, "cnn", "--model", "lenet")
    (mine / "checkpoint.pt").write_bytes((other / "checkpoint.pt").read_bytes())
    assert main(["run", "--resume", str(mine)]) == 2
    assert "does not belong to the run" in _err(capsys)


def test_state_with_a_wrong_shape_is_refused(tmp_path, capsys):
    out = _finished_run(tmp_path)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    state["server"]["weights"] = torch.zeros(7)
    from e3sfc.federated.checkpoint import stamp
    state = stamp({k: v for k, v in state.items() if k != "checksums"})  # checksums that match: the shape is wrong
    buf = io.BytesIO()
    torch.save(state, buf)
    (out / "checkpoint.pt").write_bytes(buf.getvalue())
    assert main(["run", "--resume", str(out)]) == 2
    assert "parameters" in _err(capsys)


def test_second_writer_is_refused_and_stale_temp_files_go(tmp_path, capsys):
    out = _finished_run(tmp_path)
    stale = out / ".metrics.jsonl.abc123.tmp"
    with locked_run_dir(out):  # another process (or Simulation) writing this folder
        stale.write_text("half")  # its write in progress: the refused second run leaves it alone
        assert main(["run", "--resume", str(out)]) == 2
        assert "is in use by another e3sfc run" in _err(capsys)
        assert stale.exists()
    assert main(["run", "--resume", str(out)]) == 0
    assert not stale.exists()
    assert len(read_jsonl(out / "metrics.jsonl")) == 3


def test_two_new_runs_in_one_folder(tmp_path, capsys):
    out = tmp_path / "same"
    with locked_run_dir(out):
        assert main(["run", *FAST, "--out", str(out)]) == 2
        assert "is in use by another e3sfc run" in _err(capsys)
    assert not (out / "config.json").exists()


def test_a_folder_that_never_checkpointed_can_be_reused(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / "config.json").write_text('{"method": "fedavg"}')
    (out / "metrics.jsonl").write_text('{"round": 1, "accuracy": 0.5}\n' * 7)
    assert main(["run", "--resume", str(out)]) == 2
    assert "never checkpointed" in _err(capsys)
    assert main(["run", *FAST, "--out", str(out)]) == 0
    assert len(read_jsonl(out / "metrics.jsonl")) == 2


# ---- issue 32 item 3: numbers that never fit or never finish are refused before anything is written ----

BIG = "99999999999999999999"


@pytest.mark.parametrize("argv,needle", [
    (["--method", "e3sfc", "--downlink-samples", BIG], "--downlink-samples: '99999999999999999999' is not allowed; "
                                                       "expected an integer that fits in 64 bits"),
    (["--rounds", BIG], "--rounds: '99999999999999999999' is not allowed"),
    (["--local-epochs", BIG], "--local-epochs: '99999999999999999999' is not allowed"),
    (["--method", "fedsynth", "--unroll", BIG], "--unroll: '99999999999999999999' is not allowed"),
    (["--method", "fedsynth", "--synth-iters", BIG], "--synth-iters: '99999999999999999999' is not allowed"),
    (["--method", "e3sfc", "--downlink-samples", "1000000000"], "--downlink-samples: this run needs about"),
    (["--rounds", "9223372036854775807"], "--rounds: this run needs at least"),
    (["--local-epochs", "1000000000000"], "--local-epochs: this run needs at least"),
    (["--method", "fedsynth", "--synth-iters", "1000000000000000"], "--synth-iters: this run needs at least"),
    (["--method", "fedsynth", "--unroll", "100000000000"], "--unroll: this run needs about"),
    (["--method", "3sfc", "--steps", "100000000000000"], "--steps: this run needs at least"),
    (["--partition", "iid", "--clients", "100000000000"], "--clients: 100000000000 clients and"),
])
def test_numbers_that_never_fit_or_finish(argv, needle, tmp_path, capsys):
    out = tmp_path / "runs" / "r"
    assert main(["run", *FAST, "--out", str(out), *argv]) == 2
    assert needle in _err(capsys)
    assert not (tmp_path / "runs").exists()  # no .lock, no config.json, no folder


def test_big_but_legitimate_runs_pass_the_estimates():
    from e3sfc.config import RunConfig
    from e3sfc.federated.estimate import estimate_seconds, MAX_RUN_SECONDS

    cfg = RunConfig(dataset="cifar10", model="resnet18", clients=10_000, rounds=1_000, method="e3sfc")
    assert estimate_seconds(cfg, 11_000_000, 50_000, 10_000)[0] < MAX_RUN_SECONDS


def test_toml_huge_rounds_nesting_and_tables(tmp_path, capsys):
    p = tmp_path / "c.toml"
    p.write_text("dataset = 'digits'\nclients = 3\nrounds = 9223372036854775807\n")
    out = tmp_path / "r"
    assert main(["run", "--config", str(p), "--out", str(out)]) == 2
    assert "--rounds: this run needs at least" in _err(capsys)
    assert not out.exists()
    p.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    assert main(["run", "--config", str(p)]) == 2
    assert "nests arrays or tables too deeply" in _err(capsys)
    p.write_text("out = {a = 1}\n")
    assert main(["run", "--config", str(p)]) == 2
    assert "--out: a table is not allowed; expected one str value" in _err(capsys)


def test_out_name_too_long(tmp_path, capsys):
    out = tmp_path / ("x" * 300)
    assert main(["run", *FAST, "--out", str(out)]) == 2
    assert "--out: cannot create a run folder at" in _err(capsys)
    assert list(tmp_path.iterdir()) == []


def test_a_bad_value_in_the_config_file_is_refused_even_where_a_flag_overrides_it(tmp_path, capsys):
    p = tmp_path / "c.toml"
    for text, needle in (('rounds = "three"\n', "--rounds: 'three' is not a valid int"),
                         ("clients = 2.5\n", "--clients: 2.5 is not a valid int"),
                         ("[rounds]\nx = 1\n", "--rounds: a table is not allowed")):
        p.write_text(text)
        out = tmp_path / "r"
        assert main(["run", *FAST, "--config", str(p), "--rounds", "1", "--clients", "3", "--out", str(out)]) == 2
        err = _err(capsys)
        assert err.startswith(f"e3sfc: error: --config: {p}: ") and needle in err, err
        assert not out.exists()


def test_a_missing_data_dir_is_refused_for_a_dataset_that_reads_no_files(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["run", *FAST, "--data-dir", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert f"--data-dir: directory '{tmp_path / 'nowhere'}' does not exist" in _err(capsys)
    for dataset in ("digits", "fmnist"):  # a name too long to look up: the same line, cut short
        assert main(["run", *FAST, "--dataset", dataset, "--data-dir", "x" * 300, "--out", str(out)]) == 2
        assert "--data-dir: directory 'xxx" in _err(capsys)
    assert not out.exists()


def test_plot_out_with_a_name_too_long_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["run", *FAST, "--out", str(run)]) == 0
    capsys.readouterr()
    for name in ("p" * 300 + ".png", "p" * 250 + ".png"):
        assert main(["plot", str(run), "--out", str(tmp_path / name)]) == 2
        assert "--out: the name 'ppp" in _err(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_an_option_no_method_of_the_run_has_is_named_in_a_warning(tmp_path, caplog):
    with caplog.at_level("WARNING"):
        assert main(["run", *FAST, "--method", "fedavg", "--lambd", "5", "--out", str(tmp_path / "a")]) == 0
    assert "--lambd 5.0 has no effect: it is an option of 3sfc, e3sfc, not of --method fedavg" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):  # the downlink's options count: no warning
        assert main(["run", *FAST, "--method", "topk", "--ratio", "0.1", "--downlink", "3sfc", "--samples", "2",
                     "--init", "seed", "--out", str(tmp_path / "b")]) == 0
    assert "has no effect" not in caplog.text
