"""e3sfc's Python API in one script: a simulation, compressing your own model's update, and your own
model, dataset and compressor registered for runs. tests/test_examples.py runs it.

    python examples/api.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

import e3sfc
from e3sfc import Compressor, Context, RunConfig, Simulation, make_compressor
from e3sfc.errors import ConfigError
from e3sfc.models import batchnorm_to_groupnorm
from e3sfc.wire import FieldSpec, Payload

# 1. A simulation: E-3SFC on scikit-learn's digits, 4 clients, 3 rounds (metrics per round, exact bytes),
#    written to a run folder (out=: config, metrics, ledger, summary, checkpoints), with a callback per round.
with tempfile.TemporaryDirectory() as tmp:
    sim = Simulation(RunConfig(method="e3sfc", dataset="digits", clients=4, rounds=3, batch_size=32, lr=0.05,
                               steps=2, max_iter=5, out=str(Path(tmp) / "api")))
    summary = sim.run(progress=lambda t, row: print(f"   round {t}: accuracy {row.get('accuracy')}"))
    written = sorted(p.name for p in (Path(tmp) / "api").iterdir() if not p.name.startswith("."))
print("1. e3sfc on digits:", f"accuracy {summary['final_accuracy']:.3f},",
      f"{summary['total_uplink_bytes']:,} bytes up, {summary['total_downlink_bytes']:,} down,",
      f"{len(sim.metrics)} rounds in sim.metrics, run folder: {', '.join(written)}")

# 2. Compress an update of your own model: 3SFC synthesizes 4 samples (8-bit) whose gradient through the
#    model at w_t points where the update does; the receiver decodes the same bytes at w_t.
model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
w_t = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
update = torch.randn(w_t.numel(), generator=torch.Generator().manual_seed(0)) * 1e-2
ctx = Context(model, w_t, input_shape=(1, 8, 8), num_classes=10, generator=torch.Generator().manual_seed(1))
comp = make_compressor("3sfc", samples=4, feature_bits=8)
payload, stats = comp.compress(update, ctx)
blob = comp.encode(payload)                        # the bytes you send
decoded = comp.decode_update(blob, ctx)            # what the receiver gets (checked, finite)
print(f"2. 3sfc: {len(blob)} bytes for a {4 * w_t.numel():,}-byte update, cosine {stats['cosine']:.3f}")


# 3. Your own model, dataset and compressor, registered for runs (and for the CLI in this process).
class TinyNet(nn.Module):
    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), 48), nn.ReLU(),
                                  nn.Linear(48, num_classes))

    def forward(self, x):
        return self.body(x)


class Half(Compressor):
    """Sends every update in float16 (unbiased up to rounding, so no error feedback)."""

    name, method_id, biased = "half", 200, False

    def fields(self, ctx):
        return [FieldSpec(np.dtype("<f2"), (ctx.num_params,))]

    def compress(self, target, ctx):
        return Payload.of(self.method_id, target.to(torch.float16).cpu().numpy()), {}

    def decompress(self, payload, ctx):
        return payload.tensor(0, ctx.device).to(ctx.weights.dtype)


g = torch.Generator().manual_seed(2)
centers = torch.randn(3, 1, 6, 6, generator=g)
labels = torch.randint(0, 3, (600,), generator=g)
images = centers[labels] + 0.5 * torch.randn(600, 1, 6, 6, generator=g)
e3sfc.register_model("tinynet", TinyNet)
e3sfc.register_dataset("blobs", TensorDataset(images[:480], labels[:480]), TensorDataset(images[480:], labels[480:]),
                       num_classes=3)
e3sfc.register_compressor(Half)
for method in ("half", "3sfc"):
    s = Simulation(RunConfig(method=method, dataset="blobs", model="tinynet", clients=3, rounds=3, lr=0.1,
                             steps=2, max_iter=5)).run()
    print(f"3. {method} on blobs with tinynet: accuracy {s['final_accuracy']:.3f}, "
          f"{s['uplink_bytes_per_client_round']:,} bytes a client-round up")

# 4. A model with BatchNorm: the synthesis methods refuse it with one line (their decoder is the model's
#    gradient, and BatchNorm's running statistics are never sent); GroupNorm over the same channels fits.
class BNNet(nn.Module):
    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(input_shape[0], 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Flatten(), nn.Linear(8 * input_shape[1] * input_shape[2], num_classes))

    def forward(self, x):
        return self.body(x)


e3sfc.register_model("bnnet", BNNet)
try:
    Simulation(RunConfig(method="3sfc", dataset="blobs", model="bnnet", clients=3, rounds=1))
except ConfigError as err:
    print("4. bnnet refused:", err)
e3sfc.register_model("gnnet", lambda shape, classes: batchnorm_to_groupnorm(BNNet(shape, classes)))
s = Simulation(RunConfig(method="3sfc", dataset="blobs", model="gnnet", clients=3, rounds=3, lr=0.1,
                         steps=2, max_iter=5)).run()
print(f"4. gnnet (BatchNorm -> GroupNorm) with 3sfc: accuracy {s['final_accuracy']:.3f}")
