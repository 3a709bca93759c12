#!/usr/bin/env bash
# Make Fashion-MNIST available: Debian's dataset-fashion-mnist when we are root
# with apt, else a download with SHA-256 checks into the user cache. If neither
# works, say so in one line; the demo then falls back to scikit-learn digits.
set -uo pipefail
bin=${1:-.venv/bin}
if E3SFC_NO_DOWNLOAD=1 "$bin/e3sfc" fetch fmnist >/dev/null 2>&1; then  # already here
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  if (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; }); then
    echo "data: Fashion-MNIST installed from Debian (dataset-fashion-mnist)"
    exit 0
  fi
fi
if "$bin/e3sfc" fetch fmnist; then
  exit 0
fi
echo "data: notice: Fashion-MNIST is unavailable (no apt, no download); the demo will use scikit-learn digits"
exit 0
