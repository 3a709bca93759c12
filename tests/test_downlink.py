"""Double-way compression with any compressor: replicas equal the server model bit for bit, exact bytes,
catch-up by replay or the full model (whichever is fewer bytes), one-line errors for bad settings."""

from __future__ import annotations

import pytest
import torch

from e3sfc.cli import main
from e3sfc.config import RunConfig, downlink_choices
from e3sfc.federated import Simulation

QUICK = dict(dataset="digits", model="mlp", batch_size=32, lr=0.05, steps=2, max_iter=5, threads=1)


def _down(down: str) -> dict:
    """--downlink DOWN with its knobs (a ratio where it has one, few FedSynth iterations)."""
    return {"downlink": down, **({"downlink_ratio": "0.05"} if down in ("topk", "stc") else {}),
            **({"synth_iters": 3} if down == "fedsynth" else {})}
DOWNLINKS = [d for d in downlink_choices() if d not in ("auto", "dense")]


def test_every_method_but_the_dense_and_e3sfc_names_can_be_a_downlink():
    assert set(DOWNLINKS) == {"3sfc", "topk", "stc", "sign", "qsgd", "fedsynth", "powersgd"}


@pytest.mark.parametrize("down", DOWNLINKS)
def test_replicas_equal_the_server_under_partial_participation(down):
    sim = Simulation(RunConfig(**QUICK, method="topk", **_down(down), clients=6, fraction=0.5, rounds=4,
                               init="seed"))
    sim.run()
    assert sim.server.downlink.compressed
    for k in range(6):  # every client, whatever it missed, catches up to exactly the server's model
        assert torch.equal(sim.sync(sim.round + 1, k), sim.weights), (down, k)


@pytest.mark.parametrize("down", DOWNLINKS)
def test_exact_downlink_bytes_at_full_participation(down):
    """init seed, everyone every round: from round 2 on each client gets exactly one broadcast a round."""
    cfg = RunConfig(**QUICK, method="stc", **_down(down), clients=3, rounds=3, init="seed")
    sim = Simulation(cfg)
    sim.run()
    ctx = sim.server.context(0, sim.schedule_log[0] if sim.schedule_log else None)
    size = sim.server.downlink.compressor.payload_bytes(ctx)
    assert sim.ledger.round_bytes(1, "down") == 0
    for t in (2, 3):
        assert sim.ledger.per_client(t, "down") == {k: size for k in range(3)}
    # the server's residual keeps what the broadcasts left out (biased downlinks)
    if sim.server.downlink.compressor.biased:
        assert -1 in sim.server.downlink.ef.residuals


def test_catch_up_takes_the_full_model_when_that_is_fewer_bytes():
    """A topk downlink keeping 30% of the entries (2.4 P bytes): one missed broadcast is replayed, two cost more than
    the dense model, so the client gets the model."""
    sim = Simulation(RunConfig(**QUICK, method="fedavg", downlink="topk", downlink_ratio="0.3", clients=4,
                               rounds=3, init="seed"))
    sim.run()
    down = sim.server.downlink
    dense, one = sim.server.dense_bytes, down.compressor.payload_bytes(sim.server.context(0, None))
    assert one < dense < 2 * one
    down.version[0] = sim.round          # behind by one broadcast
    assert down.plan(sim.round + 1, 0, dense) == "replay"
    down.version[1] = sim.round - 1      # behind by two
    down.owed[1] = 2 * one
    assert down.plan(sim.round + 1, 1, dense) == "model"
    for k in range(4):
        assert torch.equal(sim.sync(sim.round + 1, k), sim.weights)


def test_auto_downlink_is_the_methods_own():
    assert RunConfig(method="e3sfc").resolved_downlink == "3sfc"
    assert RunConfig(method="topk").resolved_downlink == "dense"
    assert RunConfig(method="e3sfc").resolved_init == "seed" and RunConfig(method="stc").resolved_init == "broadcast"


@pytest.mark.parametrize("argv,needle", [
    (["--downlink", "zip"], "--downlink: 'zip' is not allowed; expected one of auto, dense, "),
    (["--downlink", "fedavg"], "--downlink: 'fedavg' is not allowed"),
    (["--downlink", "topk", "--downlink-ratio", "2"], "--downlink-ratio: '2' is not allowed; expected a fraction"),
    (["--downlink", "topk", "--downlink-ratio", "match:nope"], "--downlink-ratio: 'match:nope' is not allowed"),
    (["--downlink", "topk", "--downlink-ratio", "match:topk"], "--downlink-ratio: match:topk cannot match"),
    (["--downlink-ratio", "0.1"], "--downlink-ratio: '0.1' is not allowed; expected unset unless --downlink"),
    (["--method", "topk", "--feature-bits", "8"], "--feature-bits: 8 is not allowed; expected the default with "
                                                   "--method topk and --downlink dense (it is a knob of 3sfc"),
    (["--method", "fedavg", "--levels", "4"], "--levels: 4 is not allowed"),
])
def test_bad_downlink_settings_are_one_line(argv, needle, tmp_path, capsys):
    code = main(["run", "--dataset", "digits", "--clients", "2", "--rounds", "1", "--out", str(tmp_path / "r"),
                 *argv])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


@pytest.mark.parametrize("method", ["3sfc", "e3sfc", "topk"])
def test_simulator_round_equals_each_client_handled_alone(method):
    """The simulator's round (prepare all, compress_many, finish all) gives bit for bit what handling
    each participant alone gives (ClientRuntime.handle, the Flower client's batch of one), with the
    round's searches one at a time (batched, they differ in float rounding: tests/test_e3sfc.py)."""
    cfg = RunConfig(**QUICK, method=method, clients=4, fraction=0.75, rounds=3, batch_search=False)
    sim, alone = Simulation(cfg), Simulation(cfg)
    for t in (1, 2, 3):
        sim.run_round(t)
        participants, M, messages = alone.server.begin_round(t)
        updates = [alone.client(k).step(messages[k], alone.client_model,
                                                 alone.client(k).sgd(alone.train_model, *alone.client_data[k]))
                   for k in participants]
        alone.server.end_round(t, M, updates)
        assert torch.equal(sim.weights, alone.weights)
        assert list(sim.ledger.rows()) == list(alone.ledger.rows())
