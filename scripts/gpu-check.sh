#!/usr/bin/env bash
# The GPU checks of the open issues, as one short script for a lent GPU machine (about 8 minutes on one
# H100/H200; run from the repository root with a python3 that holds CUDA PyTorch, numpy and tqdm).
# Everything it prints also goes to $OUT (default gpu-out/), RESULTS.md with the sections it wrote.
#   1. tests/test_cuda_graphs.py: the batched 3SFC objective replayed from a CUDA graph equals eager, and
#      replicas decode a payload to the same bits on the GPU (issue 34, item 3). Graph replay stays off by
#      default until this passes on a GPU.
#   2. benchmarks/gpu_round.py: the ConvNet's and ResNet-18's 3SFC rounds against FedAvg on the same card,
#      the searches batched, one at a time and (where step 1 passed) replayed from a CUDA graph (issue 34,
#      goal: ResNet-18 3SFC <= 2x FedAvg).
#   3. Where time is left (GPU_CHECK_DATA=a folder holding Fashion-MNIST's four .gz files, carried to the
#      machine): ResNet-18 one way on Fashion-MNIST padded to 3x32x32 (fmnist-rgb32), seeds 42 and 43, 5
#      rounds each, 3SFC with --payload-bytes 3215 against coded Top-k at the same bytes: a first look and
#      the round times for issue 31, item 4 (its 50-round runs need more than one session's device time).
# Usage:  OUT=/some/dir bash scripts/gpu-check.sh   (CPU only: GPU_CHECK_QUICK=1 checks the script runs)
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
quick=${GPU_CHECK_QUICK:-0}
cp benchmarks/RESULTS.md "$out/RESULTS.before.md"

if [ "$quick" = 1 ]; then
  "$py" benchmarks/gpu_round.py --quick --device cpu --variants fedavg,batched 2>&1 | tee "$out/gpu_round.log"
  exit "${PIPESTATUS[0]}"
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/gpu.txt"
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$out/gpu.txt"

timeout 120 "$py" -m pytest -q tests/test_cuda_graphs.py 2>&1 | tee "$out/cuda_graphs.log"
graphs=${PIPESTATUS[0]}
variants=fedavg,batched,serial
[ "$graphs" = 0 ] && variants=fedavg,batched,graphed,serial
echo "gpu-check: test_cuda_graphs exit $graphs; timing $variants" | tee -a "$out/gpu.txt"

timeout 330 "$py" benchmarks/gpu_round.py --models convnet-fast,resnet18 --variants "$variants" \
  --train-subset 20000 2>&1 | tee "$out/gpu_round.log"

if [ -n "${GPU_CHECK_DATA:-}" ]; then
  for seed in 42 43; do
    for arm in "--method 3sfc --payload-bytes 3215" \
               "--method topk --index-coding golomb --value-bits 8 --ratio bytes:3215"; do
      name=resnet18-$(echo "$arm" | cut -d' ' -f2)-$seed
      # shellcheck disable=SC2086
      timeout 150 "$py" -m e3sfc.cli run --dataset fmnist-rgb32 --data-dir "$GPU_CHECK_DATA" --model resnet18 \
        --device cuda --rounds 5 --train-subset 12000 --seed "$seed" $arm --out "/tmp/gpu-check-runs/$name" \
        2>&1 | tail -n 12 | tee -a "$out/resnet18_runs.log"
    done
  done
fi
cp benchmarks/RESULTS.md "$out/RESULTS.md"
