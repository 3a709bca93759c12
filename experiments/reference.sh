#!/usr/bin/env bash
# The reference setting (Fashion-MNIST, MLP, 10 clients, Dirichlet 1.0, 1 local epoch,
# batch 64, lr 0.01, seed 42, 100 rounds) for FedAvg, 3SFC, E-3SFC, the baselines at
# 3SFC's uplink bytes, and E-3SFC under each budget schedule at one fixed budget.
# Finished runs (summary.json present) are skipped; an interrupted one resumes.
#   bash experiments/reference.sh [OUT_DIR]      (then: python experiments/table.py OUT_DIR)
set -euo pipefail
out=${1:-runs/reference}
bin=${BIN:-.venv/bin}
common=(--config configs/reference-fedavg.toml --threads 1 --checkpoint-every 10)
budget=12860000   # 2x what E-3SFC at M = 1 sends in 100 rounds (20 payloads of 3,215 B per round)
run() {
  local name=$1; shift
  if [ -f "$out/$name/summary.json" ]; then echo "skip $name (done)"; return; fi
  if [ -f "$out/$name/checkpoint.pt" ]; then "$bin/e3sfc" run --resume "$out/$name"; return; fi
  "$bin/e3sfc" run "${common[@]}" --out "$out/$name" "$@"
}
run fedavg --method fedavg
run 3sfc --method 3sfc --samples 1 --steps 10
run 3sfc-reference-lbfgs --method 3sfc --samples 1 --steps 10 --patience 0
run e3sfc --method e3sfc --samples 1 --steps 10
run topk-match --method topk --ratio match:3sfc
run stc-match --method stc --ratio match:3sfc
run sign --method sign
for s in constant decay adaptive; do
  run "e3sfc-budget-$s" --method e3sfc --schedule "$s" --budget-bytes "$budget" --target-cosine 0.3
done
