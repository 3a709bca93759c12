#!/usr/bin/env bash
# The main job: what we recommend (E-3SFC with 8-bit synthetic features, M = 4: configs/e3sfc-plus.toml)
# beside FedAvg and the published E-3SFC, on the same split of Fashion-MNIST (or digits as a fallback),
# in configs/demo.toml's short setting; then one table (e3sfc compare) and the frontier figure.
# E3SFC_DEMO_OUT: the folder for the runs; E3SFC_DEMO_ARGS: flags added to every run (the tests use it).
set -euo pipefail
bin=${1:-.venv/bin}
out=${E3SFC_DEMO_OUT:-runs/demo-$(date +%Y%m%d-%H%M%S)}
read -r -a extra <<<"${E3SFC_DEMO_ARGS:-}"
dataset=fmnist
if ! E3SFC_NO_DOWNLOAD=1 "$bin/e3sfc" fetch fmnist >/dev/null 2>&1; then
  echo "demo: notice: Fashion-MNIST not found; falling back to the scikit-learn digits dataset"
  dataset=digits
fi
# configs/demo.toml's rounds and train subset, applied to the recommended config too
short=(--rounds 20 --train-subset 30000 --dataset "$dataset")
echo "demo: 3 runs on the same split of $dataset (20 rounds, 30,000 training images: a shortened setting):"
echo "demo:   e3sfc-plus (recommended), fedavg (no compression), e3sfc (the published E-3SFC)"
echo "demo: runs into $out"
"$bin/e3sfc" run --config configs/e3sfc-plus.toml "${short[@]}" "${extra[@]}" --out "$out/e3sfc-plus"
"$bin/e3sfc" run --config configs/demo.toml --dataset "$dataset" "${extra[@]}" --method fedavg --out "$out/fedavg"
"$bin/e3sfc" run --config configs/demo.toml --dataset "$dataset" "${extra[@]}" --method e3sfc --out "$out/e3sfc"
echo
echo "demo: the three runs (mean acc, last 10%: the final accuracy; x less than dense: bytes both ways, FedAvg"
echo "demo: sends dense; MB to 0.75: megabytes both ways until the test accuracy first reached 0.75):"
"$bin/e3sfc" compare --target 0.75 "$out/e3sfc-plus" "$out/fedavg" "$out/e3sfc"
"$bin/e3sfc" plot --frontier "$out/e3sfc-plus" "$out/fedavg" "$out/e3sfc" --out "$out/frontier.png"
