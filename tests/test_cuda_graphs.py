"""On a GPU: the batched 3SFC objective replayed from a captured CUDA graph gives the same numbers as
eager, and decoding a payload gives the same bits in every replica (E-3SFC's downlink relies on it)."""

from __future__ import annotations

import pytest
import torch

from e3sfc.compress.search import cosine_match
from e3sfc.compress.synth import CosineMatchBatch, synth_grad
from e3sfc.config import RunConfig
from e3sfc.federated import Simulation
from e3sfc.models import build_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("name,shape", [("convnet-fast", (1, 28, 28)), ("lenet", (1, 28, 28))])
def test_graph_replay_equals_eager(name, shape, monkeypatch):
    # full float32 on both paths: with TF32 convolutions eager and captured kernels may round differently
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    gen = torch.Generator().manual_seed(0)
    model = build_model(name, shape, 10, seed=0).cuda().eval()
    P = sum(p.numel() for p in model.parameters())
    fs = [cosine_match(model, torch.randn(P, generator=gen).cuda(), (1, *shape), (1, 10)) for _ in range(4)]
    graphed, eager = CosineMatchBatch(fs), CosineMatchBatch(fs)
    graphed.graphs, eager.graphs = True, False
    for _ in range(3):  # the first call captures, the others replay at new points
        zs = [torch.randn(torch.Size(shape).numel() + 10, generator=gen).cuda() for _ in range(4)]
        for (fa, ca, ga), (fb, cb, gb) in zip(graphed(zs), eager(zs)):
            assert fa == pytest.approx(fb, abs=1e-5) and ca == pytest.approx(cb, abs=1e-5)
            torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-6 * float(gb.abs().max()))
    assert graphed._graph is not None and getattr(eager, "_graph", None) is None


def test_decoding_gives_the_same_bits_in_two_replicas():
    # cuDNN's default weight-gradient kernels may sum in a different order on each call
    gen = torch.Generator().manual_seed(1)
    a, b = (build_model("convnet-fast", (1, 28, 28), 10, seed=0).cuda().eval() for _ in range(2))
    x, y = torch.randn(4, 1, 28, 28, generator=gen).cuda(), torch.randn(4, 10, generator=gen).cuda()
    first = synth_grad(a, x, y)
    for model in (a, b, b, a):
        assert torch.equal(synth_grad(model, x, y), first)


def test_e3sfc_on_a_gpu_keeps_every_replica_equal_to_the_server_model():
    # the simulator raises at the start of a round if a replica's decode of the broadcast differs
    cfg = RunConfig(dataset="digits", model="convnet", method="e3sfc", clients=2, rounds=3, batch_size=32,
                    lr=0.05, device="cuda", batch_search=True)
    assert Simulation(cfg).run()["rounds"] == 3
