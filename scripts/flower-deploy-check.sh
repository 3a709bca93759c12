#!/usr/bin/env bash
# Deployment check (Flower >= 1.42: one HTTP API per SuperLink): one SuperLink and two SuperNodes on 127.0.0.1 (insecure mode,
# telemetry off), two rounds of E-3SFC with `flwr run`, then every process is stopped.
# Usage: scripts/flower-deploy-check.sh OUT_DIR [BIN_DIR]   (exit 0 when summary.json was written)
set -uo pipefail
out=$(realpath -m "$1"); bin=$(realpath "${2:-.venv/bin}")
work=$(mktemp -d)
export PATH="$bin:$PATH" FLWR_HOME="$work/flwr-home" FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 RAY_USAGE_STATS_ENABLED=0
mkdir -p "$FLWR_HOME"
cat > "$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "e3sfc-local"

[superlink.e3sfc-local]
address = "127.0.0.1:9190"
insecure = true
TOML
pids=()
# each service runs in its own process group (setsid), so that the SuperExec and app processes it
# spawns are stopped with it
cleanup() {
  for p in "${pids[@]}"; do kill -- "-$p" 2>/dev/null; done; sleep 2
  for p in "${pids[@]}"; do kill -9 -- "-$p" 2>/dev/null; done
}
trap cleanup EXIT
echo "logs in $work"
(cd "$work" && exec setsid "$bin/flower-superlink" --insecure --disable-runtime-dependency-installation \
   --host 127.0.0.1 --port 9190 --database :flwr-in-memory: \
   > "$work/superlink.log" 2>&1) &
pids+=($!)
sleep 3
for i in 0 1; do
  (cd "$work" && exec setsid "$bin/flower-supernode" --insecure --superlink 127.0.0.1:9190 \
     --host 127.0.0.1 --port "$((9094 + i))" \
     --node-config "partition-id=$i num-partitions=2" > "$work/supernode$i.log" 2>&1) &
  pids+=($!)
done
sleep 3
timeout 300 "$bin/flwr" run . e3sfc-local --stream --run-config \
  "method=\"e3sfc\" dataset=\"digits\" clients=2 rounds=2 batch-size=32 lr=0.05 steps=3 out=\"$out\"" \
  > "$work/flwr-run.log" 2>&1
rc=$?
for i in $(seq 1 60); do [ -f "$out/summary.json" ] && break; sleep 1; done
if [ ! -f "$out/summary.json" ]; then
  echo "flower deployment check failed (flwr run exit $rc); logs:"; for f in "$work"/*.log; do echo "== $f"; head -n 40 "$f"; done
  exit 1
fi
echo "flower deployment check: $(cat "$out/summary.json" | tr -d '\n ' | cut -c1-200)"
