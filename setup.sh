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
  test) "${PIP[@]}" install -e ".[tensorflow,test]"
        # Triton for tests/test_triton_kernel.py, which runs the CUDA simulator kernel under
        # Triton's CPU interpreter in a subprocess. Kept out of .venv's site-packages: Triton's
        # LLVM and TensorFlow's abort a process that loads both ("Option ... registered more than
        # once"), and torch.compile imports Triton wherever it is installed.
        if [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] && [ ! -d .venv/triton/triton ]; then
          "${PIP[@]}" install --no-deps --target .venv/triton "triton==3.9.0"
        fi ;;
  "")   "${PIP[@]}" install -e . ;;
  *)    echo "error: unknown argument '$1': expected nothing or 'test'" >&2; exit 2 ;;
esac
# Build the torch backend's fused CPU GRU kernel now (about 25 s, once; cached by torch) rather
# than during the first training step. Where it cannot be built, training uses PyTorch's native GRU.
KERAS_BACKEND=torch .venv/bin/python -c 'from lif_sbi.backends.torch import gru_kernel; gru_kernel._cpu_kernel()'
