"""Ctrl-C keeps the run: the round in progress finishes, a checkpoint is written, the message names the
real folder, and the resumed run equals one that never stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from e3sfc.config import RunConfig
from e3sfc.federated import Simulation
from e3sfc.federated.loop import Interrupted

from conftest import PROGRESS

QUICK = dict(dataset="digits", model="mlp", clients=3, rounds=6, batch_size=32, lr=0.05, seed=5)


def _rows(folder):
    return [{k: v for k, v in json.loads(line).items() if "seconds" not in k}
            for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_checkpoints_are_on_by_default():
    assert RunConfig().checkpoint_every == 10


def test_sigint_finishes_the_round_checkpoints_and_resume_equals_no_stop(tmp_path):
    cfg = RunConfig(**QUICK, method="3sfc", samples=2, steps=2, max_iter=5)
    whole = tmp_path / "whole"
    Simulation(cfg, out_dir=whole).run()
    stopped = tmp_path / "stopped"

    def ctrl_c(t, row):
        if t == 2:
            os.kill(os.getpid(), signal.SIGINT)  # arrives while round 2's records are written
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (a shell's background
    try:                                                               # job starts with SIGINT ignored)
        _interrupted_run(cfg, stopped, ctrl_c)
    finally:
        signal.signal(signal.SIGINT, before)
    assert (stopped / "checkpoint.pt").is_file() and len(_rows(stopped)) == 2
    assert not (stopped / "summary.json").exists()
    Simulation.resume(stopped).run()
    assert _rows(stopped) == _rows(whole)


def test_sigterm_stops_like_ctrl_c(tmp_path):
    """SIGTERM (a scheduler or `kill` stopping the job) finishes the round and checkpoints, as Ctrl-C does."""
    cfg = RunConfig(**QUICK, method="fedavg")
    stopped = tmp_path / "stopped"

    def term(t, row):
        if t == 2:
            os.kill(os.getpid(), signal.SIGTERM)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted, match="after round 2; checkpoint written"):
        Simulation(cfg, out_dir=stopped).run(progress=term)
    assert (stopped / "checkpoint.pt").is_file() and len(_rows(stopped)) == 2
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back


def test_the_resume_hint_quotes_a_folder_with_spaces():
    assert str(Interrupted(Path("/tmp/my runs/a"), 3)).endswith("resume with e3sfc run --resume '/tmp/my runs/a'")


def _interrupted_run(cfg, stopped, ctrl_c):
    with pytest.raises(Interrupted, match=f"after round 2; checkpoint written: resume with e3sfc run --resume "
                                          f"{stopped}"):
        Simulation(cfg, out_dir=stopped).run(progress=ctrl_c)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back


def test_ctrl_c_on_the_command_line_names_the_folder_and_resumes(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "e3sfc.cli", "run", "--dataset", "digits", "--clients", "3", "--rounds", "400",
           "--batch-size", "32", "--method", "3sfc", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,  # Ctrl-C as in a
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # terminal
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not ((out / "metrics.jsonl").is_file()
                                               and (out / "metrics.jsonl").read_text().count("\n") >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    progress = [line for line in err.strip().splitlines() if PROGRESS.match(line)]
    lines = [line for line in err.strip().splitlines() if not PROGRESS.match(line)]
    assert progress, err  # not a terminal: one line per evaluated round
    assert len(lines) == 2 and lines[0].startswith("WARNING") and "stopping after the round in progress" in lines[0]
    assert "Ctrl-C again: stop now" in lines[0], err  # said at once: a long round is not mistaken for a hang
    assert lines[1].startswith("e3sfc: interrupted after round "), err
    assert lines[1].endswith(f"resume with e3sfc run --resume {out}"), err
    done = int(lines[1].split("after round ")[1].split(";")[0])
    assert (out / "checkpoint.pt").is_file() and len(_rows(out)) == done


def test_a_run_started_ignoring_sigint_keeps_ignoring_it(tmp_path):
    """A shell's background job starts with SIGINT ignored: the run does not take it back."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        seen = []
        Simulation(RunConfig(**{**QUICK, "rounds": 2}), out_dir=tmp_path / "r").run(
            progress=lambda t, row: seen.append(signal.getsignal(signal.SIGINT)))
        assert seen == [signal.SIG_IGN, signal.SIG_IGN]
    finally:
        signal.signal(signal.SIGINT, before)


def test_the_already_holds_a_run_hint_quotes_the_folder(tmp_path):
    from e3sfc.errors import ConfigError
    from e3sfc.federated.checkpoint import check_reusable

    run = tmp_path / "my runs" / "a"
    run.mkdir(parents=True)
    (run / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match="pass --resume '.*/my runs/a' or another --out"):
        check_reusable(run)
