from __future__ import annotations

import json

import pytest

from conftest import CLI_FAST as FAST, one_line_error as _err, require_fmnist, write_mnist_like
from e3sfc.cli import main
from e3sfc.io import read_jsonl



@pytest.mark.parametrize("argv,needle", [
    (["--method", "nope"], "--method: 'nope' is not allowed; expected one of"),
    (["--dataset", "imagenet"], "--dataset: 'imagenet'"),
    (["--model", "gpt"], "--model: 'gpt'"),
    (["--rounds", "0"], "--rounds: 0 is not allowed; expected an integer >= 1"),
    (["--batch-search", "--engine", "flower"], "--batch-search: True is not allowed; expected only with --engine"),
    (["--rounds", "ten"], "--rounds: 'ten' is not a valid int"),
    (["--fraction", "1.5"], "--fraction: 1.5 is not allowed; expected a number in (0, 1]"),
    (["--lr", "-0.1"], "--lr"),
    (["--alpha", "0"], "--alpha"),
    (["--dataset", "mnist", "--data-dir", "/definitely/missing"],
     "--data-dir: directory '/definitely/missing' does not exist"),
    (["--clients", "5000"], "no data"),
    (["--bogus", "1"], "unrecognized arguments: --bogus 1"),
])
def test_bad_input_one_line_exit_2(argv, needle, capsys, tmp_path):
    with pytest.raises(SystemExit) if argv[0] == "--bogus" else _nullctx() as exc:
        code = main(["run", *FAST, "--out", str(tmp_path / "r"), *argv])
    code = exc.value.code if argv[0] == "--bogus" else code
    assert code == 2
    assert needle in _err(capsys)


class _nullctx:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_corrupt_dataset_file_is_one_line(tmp_path, capsys):
    write_mnist_like(tmp_path)
    p = tmp_path / "t10k-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:100])
    assert main(["run", "--dataset", "mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "corrupt or truncated" in _err(capsys)


def test_run_writes_record_and_config_file_with_overrides(tmp_path, capsys):
    cfgfile = tmp_path / "c.toml"
    cfgfile.write_text('dataset = "digits"\nclients = 3\nrounds = 5\nbatch-size = 32\nlr = 0.05\n')
    out = tmp_path / "run"
    assert main(["run", "--config", str(cfgfile), "--rounds", "2", "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["rounds"] == 2 and cfg["clients"] == 3 and cfg["lr"] == 0.05
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 2]
    for key in ("accuracy", "loss", "uplink_bytes", "downlink_bytes", "cum_uplink_bytes",
                "cum_downlink_bytes", "seconds"):
        assert key in rows[0]
    s = json.loads((out / "summary.json").read_text())
    for key in ("final_accuracy", "best_accuracy", "total_uplink_bytes", "total_downlink_bytes",
                "rounds", "wall_seconds", "num_params"):
        assert key in s
    assert "final accuracy" in capsys.readouterr().out
    # an existing run is never overwritten
    assert main(["run", *FAST, "--out", str(out)]) == 2
    assert "already holds a run" in _err(capsys)


def test_resume_cli(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", *FAST, "--rounds", "3", "--checkpoint-every", "1", "--out", str(out)]) == 0
    assert main(["run", "--resume", str(out)]) == 0  # already finished: nothing to redo
    assert len(read_jsonl(out / "metrics.jsonl")) == 3
    assert main(["run", "--resume", str(tmp_path / "missing")]) == 2
    capsys.readouterr()
    assert main(["run", "--resume", str(out), "--lr", "0.1"]) == 2
    assert "takes no other settings but --rounds (got --lr)" in _err(capsys)
    assert main(["run", "--resume", str(out), "--rounds", "2"]) == 2
    assert _err(capsys).startswith("e3sfc: error: --rounds: 2 is not allowed with --resume")
    assert main(["run", "--resume", str(out), "--rounds", "5"]) == 0  # extends the finished run
    assert "rounds            5" in capsys.readouterr().out
    assert [r["round"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    assert json.loads((out / "config.json").read_text())["rounds"] == 5


def test_progress_without_a_terminal_is_one_line_per_evaluated_round(tmp_path, capsys):
    """stderr not a terminal (pytest captures it): one line per evaluated round, no bar; FedAvg's
    summary says dense instead of '1.0x fewer'."""
    assert main(["run", *FAST, "--rounds", "4", "--eval-every", "2", "--out", str(tmp_path / "r")]) == 0
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["round 2/4", "round 4/4"]
    assert all(" MB so far, " in line and " s/round, ETA " in line and "accuracy 0." in line for line in lines)
    assert "dense both ways (this is FedAvg)" in out and "1.0x" not in out


def test_run_help_states_each_default_once(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: uniform)" not in text and "default 3) (default" not in text
    assert "--device {auto,cpu,cuda}" in text and "(default: auto)" in text


def test_resume_keeps_the_runs_thread_setting(tmp_path, monkeypatch):
    import torch

    pinned = []
    monkeypatch.setattr(torch, "set_num_threads", pinned.append)  # and leaves this process's alone
    out = tmp_path / "run"
    assert main(["run", *FAST, "--rounds", "3", "--threads", "1", "--checkpoint-every", "1",
                 "--out", str(out)]) == 0
    (out / "summary.json").unlink()  # pretend it stopped after its last checkpoint
    assert main(["run", "--resume", str(out)]) == 0
    assert pinned == [1, 1]


def test_end_to_end_real_fashion_mnist(tmp_path, capsys):
    require_fmnist()
    out = tmp_path / "fm"
    code = main(["run", "--dataset", "fmnist", "--model", "mlp", "--clients", "5", "--rounds", "3",
                 "--train-subset", "20000", "--test-subset", "2000", "--out", str(out)])
    assert code == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["final_accuracy"] > 0.6
    assert s["total_uplink_bytes"] == 3 * 5 * (4 * 199_210 + 11)


def test_version_and_written_files_follow_the_umask(tmp_path):
    import os
    import subprocess
    import sys

    from e3sfc import __version__
    from e3sfc.io import write_json

    r = subprocess.run([sys.executable, "-m", "e3sfc.cli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == f"e3sfc {__version__}"
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {})
        os.umask(0o077)
        write_json(tmp_path / "b.json", {})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o600


def test_fetch_says_where_the_files_are(tmp_path):
    import subprocess
    import sys

    sys.path.insert(0, str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "e3sfc.cli", "fetch", "digits"], capture_output=True, text=True)
    assert r.returncode == 0 and "files in scikit-learn" in r.stdout


def test_tensorboard_logging(tmp_path):
    import importlib.util

    import pytest

    from e3sfc.config import RunConfig
    from e3sfc.errors import ConfigError
    from e3sfc.federated import Simulation

    cfg = RunConfig(method="3sfc", dataset="digits", clients=2, rounds=2, steps=1, max_iter=3, tensorboard=True)
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(ConfigError, match="--tensorboard: needs the tensorboard package"):
            Simulation(cfg, out_dir=tmp_path / "r").run()
        assert not (tmp_path / "r" / "metrics.jsonl").exists()  # nothing written
        return
    Simulation(cfg, out_dir=tmp_path / "r").run()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tmp_path / "r" / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("accuracy")] == [1, 2] and "uplink_bytes" in acc.Tags()["scalars"]


def test_a_budget_far_above_samples_warns_on_stderr_before_round_1(tmp_path):
    """The CLI shows the budget warning (a log warning) on stderr, before round 1's progress line."""
    import subprocess
    import sys

    # digits, 3 clients, E-3SFC: a round commits 3 payloads up and 3 broadcasts of 4 (74 M + 1) + 35 bytes
    budget = 2 * 6 * (4 * (74 * 20 + 1) + 35)  # M = 20 in each of 2 rounds
    r = subprocess.run([sys.executable, "-m", "e3sfc.cli", "run", "--method", "e3sfc", *FAST, "--steps", "1",
                        "--max-iter", "2", "--budget-bytes", str(budget), "--out", str(tmp_path / "r")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    warned = [i for i, line in enumerate(lines) if line.startswith("WARNING") and "about M = 20" in line]
    progress = [i for i, line in enumerate(lines) if line.startswith("round 1/2")]
    assert len(warned) == 1 and progress and warned[0] < progress[0], r.stderr
