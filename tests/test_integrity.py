"""Checkpoint integrity (checksums over every tensor, the records and the spill files; finite numbers),
resumes that check metrics.jsonl and the ledger before any round, and runs that stop when a round
rejects every update (issue 32, items 2 and 5)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from conftest import CLI_FAST as FAST, one_line_error as _err
from e3sfc.cli import main
from e3sfc.federated.checkpoint import stamp


def _run(tmp_path, name="r", *extra) -> "Path":  # noqa: F821
    out = tmp_path / name
    assert main(["run", *FAST, "--checkpoint-every", "1", "--out", str(out), *extra]) == 0
    return out


def _edit(out, change, restamp: bool) -> None:
    """Change the checkpoint's state in place (``restamp``: with fresh checksums, as a writer that
    knows the format would)."""
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    change(state)
    if restamp:
        state = stamp({k: v for k, v in state.items() if k != "checksums"})
    buf = io.BytesIO()
    torch.save(state, buf)
    (out / "checkpoint.pt").write_bytes(buf.getvalue())


def _files(out) -> dict:
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"}


def _flip(t: torch.Tensor, i: int = 5) -> None:
    v = t.view(torch.int32)
    v[i] ^= 1 << 3  # one bit of one number


@pytest.mark.parametrize("where,needle", [
    (lambda s: _flip(s["server"]["weights"]), "the server weights does not match its checksum"),
    (lambda s: _flip(s["clients"][1]["residual"]), "the residual of client 1 does not match its checksum"),
    (lambda s: s["metrics"][0].update(accuracy=0.99), "the records (round, metrics, ledger, settings"),
    (lambda s: s.pop("checksums"), "it has no checksums"),
])
def test_a_bit_flip_anywhere_is_named(where, needle, tmp_path, capsys):
    out = _run(tmp_path, "r", "--method", "topk", "--ratio", "0.1")  # topk keeps EF residuals
    _edit(out, where, restamp=False)
    before = _files(out)
    assert main(["run", "--resume", str(out)]) == 2
    line = _err(capsys)
    assert "checkpoint.pt is damaged" in line and needle in line, line
    assert _files(out) == before  # nothing written


@pytest.mark.parametrize("where,value,needle", [
    ("weights", float("nan"), "the server weights holds non-finite values"),
    ("residual", float("inf"), "the residual of client 2 holds non-finite values"),
])
def test_non_finite_state_is_refused_by_name(where, value, needle, tmp_path, capsys):
    out = _run(tmp_path, "r", "--method", "topk", "--ratio", "0.1")

    def change(s):
        t = s["server"]["weights"] if where == "weights" else s["clients"][2]["residual"]
        t[3] = value

    _edit(out, change, restamp=True)  # checksums that match: only the numbers are wrong
    before = _files(out)
    assert main(["run", "--resume", str(out)]) == 2
    line = _err(capsys)
    assert needle in line and "payload" not in line, line
    assert _files(out) == before


def test_spilled_client_state_is_checksummed(tmp_path, capsys):
    # --state-memory 0.1 MB holds fewer than 3 clients' residuals (55,210 numbers each): some are spilled
    out = tmp_path / "r"
    assert main(["run", *FAST, "--rounds", "3", "--method", "topk", "--ratio", "0.1", "--state-memory", "0.1",
                 "--checkpoint-every", "1", "--out", str(out)]) == 0
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    spilled = {k: c["spilled"] for k, c in state["clients"].items() if "spilled" in c}
    assert spilled and all(len(e["sha256"]) == 64 for e in spilled.values())
    k, entry = next(iter(spilled.items()))
    f = out / entry["file"]
    good = f.read_bytes()
    data = bytearray(good)
    data[9] ^= 0x10
    f.write_bytes(bytes(data))
    assert main(["run", "--resume", str(out)]) == 2
    assert f"the spilled state of client {k} ({entry['file']}) does not match its checksum" in _err(capsys)
    arr = np.frombuffer(good, dtype="<f4").copy()
    arr[0] = np.inf
    f.write_bytes(arr.tobytes())  # a matching checksum in the checkpoint, but inf inside
    _edit(out, lambda s: s["clients"][k]["spilled"].update(sha256=__import__("hashlib").sha256(arr).hexdigest()),
          restamp=True)
    assert main(["run", "--resume", str(out)]) == 2
    assert f"the spilled state of client {k} ({entry['file']}) holds non-finite values" in _err(capsys)
    f.write_bytes(good)
    _edit(out, lambda s: s["clients"][k]["spilled"].update(sha256=entry["sha256"]), restamp=True)
    assert main(["run", "--resume", str(out)]) == 0


@pytest.mark.parametrize("name,junk,needle", [
    ("metrics.jsonl", b"junk\n", "metrics.jsonl line 3 is not JSON"),
    ("metrics.jsonl", b'{"round": "x"}\n', "metrics.jsonl line 3 is not a row of a run (round 'x'"),
    ("metrics.jsonl", b"\xff\xfe\n", "metrics.jsonl is not UTF-8 text"),
    ("ledger.jsonl", b"[1, 2]\n", "ledger.jsonl line 3 is not a row of a run (a JSON list, not an object)"),
])
def test_resume_checks_the_records_before_any_round(name, junk, needle, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["run", *FAST, "--rounds", "3", "--checkpoint-every", "1", "--out", str(out)]) == 0
    # back to the checkpoint of round 2 (as if killed there): a resume would run round 3
    from e3sfc.federated import Simulation
    from e3sfc.federated.checkpoint import read_config
    cfg = read_config(out)
    (out / "checkpoint.pt").unlink()
    for n in ("metrics.jsonl", "ledger.jsonl", "summary.json", "config.json"):
        (out / n).unlink()
    Simulation(cfg, out_dir=out).run(stop_after=2)
    with open(out / name, "ab") as f:
        f.write(junk)
    before = _files(out)
    assert main(["run", "--resume", str(out)]) == 2
    line = _err(capsys)
    assert line.startswith("e3sfc: error: --resume: ") and needle in line, line
    assert _files(out) == before  # no round ran, nothing appended to the damaged file
    (out / name).unlink()  # as the message says: the checkpoint rebuilds it
    assert main(["run", "--resume", str(out)]) == 0
    assert [r["round"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())] == [1, 2, 3]


def test_a_round_that_rejects_every_update_stops_the_run(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["run", *FAST, "--lr", "1e30", "--checkpoint-every", "1", "--out", str(out)]) == 1
    line = _err(capsys)
    assert line == ("e3sfc: error: round 1: all 3 updates were rejected (client 0: payload holds non-finite "
                    "values (NaN or inf); 2 more), so the model cannot move; the run stops after round 0; if local "
                    "training diverges, lower --lr"), line
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rejected_updates"] == 3 and summary["rounds"] == 0 and summary["stopped"] in line
    assert not (out / "checkpoint.pt").exists() and not (out / "metrics.jsonl").exists()


def test_a_stop_keeps_the_last_checkpoint_and_the_records(tmp_path, capsys, monkeypatch):
    """All hostile clients from round 2 on: round 1 is recorded and checkpointed, round 2 stops the run."""
    from e3sfc.federated import runtime

    out = tmp_path / "r"
    real = runtime.ServerRuntime.end_round

    def end_round(self, t, M, updates, true_mean=None):
        if t == 2:
            for u in updates:
                u.blob = b"garbage"
        return real(self, t, M, updates, true_mean)

    monkeypatch.setattr(runtime.ServerRuntime, "end_round", end_round)
    assert main(["run", *FAST, "--checkpoint-every", "1", "--out", str(out)]) == 1
    assert "round 2: all 3 updates were rejected (client 0: payload is 7 bytes" in _err(capsys)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["round"] == 1
    assert [json.loads(x)["round"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    assert json.loads((out / "summary.json").read_text())["rejected_updates"] == 3


def test_summary_counts_rejected_updates_across_a_resume(tmp_path):
    out = tmp_path / "r"
    assert main(["run", *FAST, "--rounds", "3", "--adversary", "nan", "--adversaries", "1",
                 "--checkpoint-every", "1", "--out", str(out)]) == 0
    whole = json.loads((out / "summary.json").read_text())["rejected_updates"]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert whole == sum(r["rejected"] for r in rows) > 0
