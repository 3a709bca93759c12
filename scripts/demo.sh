#!/usr/bin/env bash
# The main job: a short federated training on real Fashion-MNIST (or digits as a fallback).
set -euo pipefail
bin=${1:-.venv/bin}
out=${E3SFC_DEMO_OUT:-runs/demo-$(date +%Y%m%d-%H%M%S)}
dataset=fmnist
if ! E3SFC_NO_DOWNLOAD=1 "$bin/e3sfc" fetch fmnist >/dev/null 2>&1; then
  echo "demo: notice: Fashion-MNIST not found; falling back to the scikit-learn digits dataset"
  dataset=digits
fi
exec "$bin/e3sfc" run --config configs/demo.toml --dataset "$dataset" --out "$out"
