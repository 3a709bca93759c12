#!/usr/bin/env bash
# Create the virtual environment and install e3sfc with its dev extras.
# torch is pinned to 2.13.0 here: on this kind of machine that is a CPU wheel on
# disk; a plain `torch` requirement would pull a multi-GB CUDA build. flwr is pinned to
# 1.42.0, the lower bound pyproject states (E3SFC_FLWR_VERSION to test another).
set -euo pipefail
venv=${1:-.venv}
python=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
pip="$venv/bin/python -m pip"
$pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
  $pip install -q "torch==${E3SFC_TORCH_VERSION:-2.13.0}"
fi
# flwr pinned to the version the tests run against, which is the lower bound in pyproject
$pip install -q "flwr[simulation]==${E3SFC_FLWR_VERSION:-1.42.0}"
$pip install -q -e ".[dev]"
echo "bootstrap: $("$venv/bin/python" -c 'import torch, e3sfc; print("e3sfc", e3sfc.__version__, "torch", torch.__version__)')"
