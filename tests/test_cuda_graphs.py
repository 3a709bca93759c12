"""On a GPU the batched 3SFC objective replays a captured CUDA graph: the same numbers as eager."""

from __future__ import annotations

import pytest
import torch

from e3sfc.compress.search import cosine_match
from e3sfc.compress.synth import CosineMatchBatch
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
