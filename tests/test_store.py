"""--state-memory: client state beyond a memory budget spills to disk and comes back unchanged."""

from __future__ import annotations

import pytest
import torch

from e3sfc.config import RunConfig
from e3sfc.errors import ConfigError
from e3sfc.federated import Simulation
from e3sfc.federated.checkpoint import stamp
from e3sfc.federated.store import ClientStore

QUICK = dict(method="3sfc", dataset="digits", model="mlp", batch_size=32, lr=0.05, steps=2, max_iter=5, clients=8,
             fraction=0.5, rounds=5)
TIMING = ("seconds", "compress_seconds", "train_seconds")


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.mark.parametrize("method", ["3sfc", "e3sfc"])
def test_spilled_run_equals_a_run_in_memory(method, tmp_path):
    """A budget of about one client's tensors: every round spills and reloads clients, and the run is
    bit for bit the run that kept everything in memory (residuals, replicas, warm starts)."""
    cfg = RunConfig(**{**QUICK, "method": method})
    a = Simulation(cfg)
    a.run()
    one = a.num_params * 4 / 2 ** 20
    b = Simulation(cfg.replace(state_memory=1.5 * one), out_dir=tmp_path / "b")
    b.run()
    assert b.store.spills > 0 and b.store.loads > 0
    assert b.store.held_bytes() <= 1.5 * one * 2 ** 20
    assert len(b.store.live) <= 2 and len(b.store) == len(a.store)
    assert _strip(a.metrics) == _strip(b.metrics)
    assert torch.equal(a.weights, b.weights)
    for k in sorted([*a.store.live, *a.store.cold]):  # every client's state, read back from disk where it was spilled
        ca, cb = a.client(k), b.client(k)
        assert torch.equal(ca.ef.residuals[k], cb.ef.residuals[k]) and ca.trained == cb.trained


def test_checkpoint_keeps_its_snapshot_when_later_rounds_spill_again(tmp_path):
    """Checkpoint at round 2, rounds 3-4 overwrite the spill files, the process stops; resuming from
    round 2 reads the checkpoint's snapshot, not the newer spills, and ends where the unbroken run ends."""
    cfg = RunConfig(**QUICK)
    a = Simulation(cfg)
    a.run()
    b = Simulation(cfg.replace(state_memory=1e-4, checkpoint_every=2), out_dir=tmp_path / "b")
    b.run(stop_after=2)
    before = {p.name: p.read_bytes() for p in (tmp_path / "b" / "spill").iterdir()}
    for t in (3, 4):  # the process goes on without a checkpoint (then dies): its spills replace the files
        b.run_round(t)
    after = {p.name: p.read_bytes() for p in (tmp_path / "b" / "spill").iterdir()}
    assert any(before.get(n) != v for n, v in after.items())
    assert [d.name for d in (tmp_path / "b").glob("state-r*")] == ["state-r2"]
    c = Simulation.resume(tmp_path / "b")
    assert c.round == 2
    c.run()
    assert _strip(a.metrics) == _strip(c.metrics) and torch.equal(a.weights, c.weights)


def test_hostile_snapshot_entries_are_refused(tmp_path):
    cfg = RunConfig(**QUICK, state_memory=1e-4, checkpoint_every=1)
    sim = Simulation(cfg, out_dir=tmp_path / "r")
    sim.run(stop_after=2)
    state = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    k, entry = next((k, c) for k, c in state["clients"].items() if "spilled" in c)
    for bad, why in ((dict(entry["spilled"], file="../../etc/passwd"), "is not state-r"),
                     (dict(entry["spilled"], layout=[["code", 4]]), "names fields outside"),
                     (dict(entry["spilled"], layout=[["residual", 7]]), "numbers")):
        state["clients"][k] = {**entry, "spilled": bad}
        torch.save(state, tmp_path / "r" / "checkpoint.pt")  # as written: its checksums refuse it
        with pytest.raises(ConfigError, match="records .* do not match their checksum"):
            Simulation.resume(tmp_path / "r")
        torch.save(stamp(state), tmp_path / "r" / "checkpoint.pt")  # with matching checksums: still refused
        with pytest.raises(ConfigError, match=why):
            Simulation.resume(tmp_path / "r")
    state["clients"][k] = entry  # a truncated snapshot file
    torch.save(stamp(state), tmp_path / "r" / "checkpoint.pt")
    path = tmp_path / "r" / entry["spilled"]["file"]
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(ConfigError, match="bytes; its layout needs"):
        Simulation.resume(tmp_path / "r")


def test_store_spills_least_recently_used_first(tmp_path):
    class C:  # the runtime's shape as the store sees it
        def __init__(self, k):
            self.cid, self.replica, self.start = k, None, None
            self.ef = type("EF", (), {"residuals": {k: torch.full((10,), float(k))}})()

    store = ClientStore(C, budget=2 * 40, folder=tmp_path)
    for k in (0, 1, 2):
        store.get(k)
    store.get(0)  # 0 used last: 1 is the least recently used
    store.settle()
    assert sorted(store.live) == [0, 2] and list(store.cold) == [1]
    assert (tmp_path / "client-1.f32").stat().st_size == 40
    assert torch.equal(store.get(1).ef.residuals[1], torch.full((10,), 1.0)) and store.loads == 1
    with pytest.raises(ConfigError, match="--state-memory"):
        RunConfig(state_memory=-1)
