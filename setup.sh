#!/usr/bin/env bash
# Make (or update) the project's virtual environment in .venv; safe to run any number of times.
#   bash setup.sh        the package with the PyTorch backend (enough for `python -m lif_sbi.train`)
#   bash setup.sh test   plus TensorFlow and the test and benchmark tools
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "error: Python 3.11 or newer is required" >&2; exit 2; }
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
# Pin torch first: this exact release is a CPU build where one is provided locally, and an
# unpinned torch would pull a multi-GB CUDA build. Anything >= 2.13 works (CUDA builds too).
.venv/bin/python -c 'import torch' 2>/dev/null || "${PIP[@]}" install "torch==2.13.0"
case "${1:-}" in
  test) "${PIP[@]}" install -e ".[tensorflow,test]" ;;
  "")   "${PIP[@]}" install -e . ;;
  *)    echo "error: unknown argument '$1': expected nothing or 'test'" >&2; exit 2 ;;
esac
# Build the torch backend's fused CPU GRU kernel now (about 25 s, once; cached by torch) rather
# than during the first training step. Where it cannot be built, training uses PyTorch's native GRU.
KERAS_BACKEND=torch .venv/bin/python -c 'from lif_sbi.backends.torch import gru_kernel; gru_kernel._cpu_kernel()'
