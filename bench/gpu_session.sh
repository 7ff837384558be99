#!/usr/bin/env bash
# The GPU measurements in one call: CUDA tests, GPU benchmarks, a configuration end to end.
#
# Written for the lent device machine (one H100/H200, PyTorch and JAX installed, no Keras,
# BayesFlow or TensorFlow, no network), run from the repository root:
#
#   bash bench/gpu_session.sh        # with .whl/ holding keras, bayesflow, namex, optree (and ninja) wheels
#
# Every step has its own time limit inside an overall budget (BUDGET_S, default 560 s), so a slow
# step cannot take the rest down with it. Everything lands in $WORK and is packed after each step
# into $OUT/gpu_session.tar.gz (logs, pytest-benchmark JSON, a training run's folder without its
# model file). The summary table is printed last. Figures from it go to bench/RESULTS.md ("GPU:
# NVIDIA H100" / "H200"), the raw files behind them to results/bench/gpu-h100/ or gpu-h200/.
#
# With no option: the backend and CUDA tests, JAX's and torch's eager steps and sampling, then
# torch.compile's steps with inductor's CUDA graphs with what is left of the budget. Each option
# below is a call of its own instead:
# REF_ONLY="<backend> <jit_compile>" (for example REF_ONLY="jax auto" or REF_ONLY="torch true"):
#   REF_CONFIG (default `reference`) end to end under that backend, then, with what is left of the
#   budget, sampling under JAX and torch, the backend and CUDA tests, and torch.compile's conv_pool
#   step. `reference` under JAX trains for about 200 s on an H200.
# GRAPHS=1: torch's recorded steps as CUDA graphs (training.record_steps): their GPU tests first (a
#   failure ends the call), torch's recorded vs eager and JAX's steps, then REF_CONFIG end to end
#   under torch (`reference`: about 150 s on an H100).
# SAMPLING_ONLY=1: JAX's compiled vs eager sampling (backends.compile_inference) in fresh processes,
#   on a `reference` model trained for 4 epochs.
# SAMPLER=1: torch's recorded sampler's GPU test and benchmark.
# SIMULATOR=1: the simulator's CUDA tests (the fused Triton kernel bit for bit the Numba kernel's
#   numbers), then its benchmark: eager, torch.compile and Triton kernels against the card's memory
#   floor (fill and copy of the same bytes), N = 1e3 to 1e6; then `default` online end to end.
set -u
OUT=${OUT:-/tmp/gpu_session_out}
WORK=${WORK:-/tmp/gpu_session}
BUDGET_S=${BUDGET_S:-560}
REF_CONFIG=${REF_CONFIG:-reference}  # a local dry run can set ci
mkdir -p "$OUT" "$WORK/results"
END=$((SECONDS + BUDGET_S))

pack() { tar czf "$OUT/gpu_session.tar.gz" --exclude='*.keras' --exclude='*.npz' --exclude=checkpoints -C "$WORK" . 2>/dev/null; }

step() {  # step NAME MAX_SECONDS command...: run with min(MAX, budget left) seconds, log to $WORK/NAME.log
  local name=$1 max=$2 t
  shift 2
  t=$((END - SECONDS))
  ((t > max)) && t=$max
  if ((t < 25)); then
    echo "== $name: skipped, ${t}s of the budget left" | tee -a "$WORK/summary.txt"
    return 0
  fi
  local s=$SECONDS
  timeout -k 5 "$t" "$@" >"$WORK/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc=$rc in $((SECONDS - s))s (limit ${t}s)" | tee -a "$WORK/summary.txt"
  tail -n 12 "$WORK/$name.log"
  pack
}

# --- set-up: Keras and BayesFlow from carried wheels; lif_sbi from the working tree --------------
if ! python3 -c "import keras, bayesflow" >/dev/null 2>&1 && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
  # backends/ is installed as lif_sbi.backends by pyproject's package-dir mapping; without an
  # install, a link in the working copy does the same.
  [ -e lif_sbi/backends ] || ln -s ../backends lif_sbi/backends
fi
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg XLA_PYTHON_CLIENT_PREALLOCATE=false
export LIF_SBI_BENCH_CACHE=$WORK/bench_cache
{
  date -u +%FT%TZ
  nvidia-smi -L 2>&1
  # The device copy's HEAD can lag the working tree it carries (it can be the base commit of the
  # checkout), so also print the tree's hash: compare with `git rev-parse <commit>^{tree}` here.
  echo "HEAD $(git rev-parse --short HEAD 2>/dev/null || echo '(no git)')"
  echo "working tree $(cp .git/index /tmp/gpu_session_index 2>/dev/null; GIT_INDEX_FILE=/tmp/gpu_session_index git add -A . >/dev/null 2>&1; GIT_INDEX_FILE=/tmp/gpu_session_index git write-tree 2>/dev/null || echo '(no git)')"
  python3 - <<'EOF'
import importlib, platform
print("python", platform.python_version())
for name in ("torch", "jax", "keras", "bayesflow", "numpy", "numba", "tensorflow"):
    try:
        m = importlib.import_module(name)
        print(name, getattr(m, "__version__", "?"))
    except Exception as e:  # noqa: BLE001 - a report of what is there
        print(name, "not importable:", type(e).__name__)
import torch
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
} >"$WORK/environment.txt" 2>&1
cat "$WORK/environment.txt"

STEP_K="cuda and (reference-mlp or conv_pool-mlp) and not fused"
SAMPLE_K="(test_posterior_sampling or test_posterior_one_trace) and cuda and (reference or conv_pool) and not gru"
# --- GRAPHS=1: torch's eager step recorded and replayed as CUDA graphs (training.record_steps), its
# own call: the GPU tests against eager steps (the call stops if they fail), torch's recorded and
# eager steps and JAX's on the card, then REF_CONFIG end to end under torch ------------------------
if [ -n "${GRAPHS:-}" ]; then
  # the tests: recorded vs eager steps, Adam on flat buffers left alone on CUDA, a failed capture's
  # eager fallback, gru_many, and the GRU's shape inference on meta tensors (CUDA the Keras device)
  step graph_test 200 env KERAS_BACKEND=torch python3 -m pytest -q -p no:cacheprovider tests/test_backends*.py \
    -k "(recorded_steps_train and cuda) or (gru_many_is_one and torch) or (flat_buffers and cuda) or capture_that_fails or meta_tensors"
  if ! grep -q "5 passed" "$WORK/graph_test.log"; then echo "== graph test failed: stopping" | tee -a "$WORK/summary.txt"; END=$SECONDS; fi
  step bench_torch_graphs 110 env KERAS_BACKEND=torch python3 -m pytest -q -p no:cacheprovider bench/bench_training.py \
    -k "test_torch_recorded_step and cuda" --benchmark-json="$WORK/bench_torch_graphs.json"
  step bench_jax_steps 90 env KERAS_BACKEND=jax python3 -m pytest -q -p no:cacheprovider bench/bench_training.py \
    -k "test_training_step and $STEP_K" --benchmark-json="$WORK/bench_training_jax.json"
  step "train_${REF_CONFIG}_torch" 600 env KERAS_BACKEND=torch python3 -m lif_sbi.train --config "$REF_CONFIG" --results-dir "$WORK/results"
fi

# --- SAMPLER=1: torch's recorded sampler on the card, its test first, then its benchmark
if [ -n "${SAMPLER:-}" ]; then
  step sampler_test 120 env KERAS_BACKEND=torch python3 -m pytest -q -p no:cacheprovider tests/test_backends*.py -k "recorded_sampling and cuda"
  step bench_torch_sampler 90 env KERAS_BACKEND=torch python3 -m pytest -q -p no:cacheprovider bench/bench_training.py \
    -k "test_recorded_sampling and cuda" --benchmark-json="$WORK/bench_torch_sampler.json"
fi

# --- SIMULATOR=1: the CUDA simulator's tests and benchmark, then `default` with online data
if [ -n "${SIMULATOR:-}" ]; then
  step simulator_test 150 env KERAS_BACKEND=torch python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_simulator.py
  step bench_simulator 200 env KERAS_BACKEND=torch python3 -m pytest -q -p no:cacheprovider bench/bench_simulator.py \
    -k "test_cuda" --benchmark-json="$WORK/bench_simulator_cuda.json"
  step train_default_online 300 env KERAS_BACKEND=torch python3 -m lif_sbi.train --set data.mode=online --results-dir "$WORK/results"
fi

if [ -z "${REF_ONLY:-}${SAMPLING_ONLY:-}${GRAPHS:-}${SAMPLER:-}${SIMULATOR:-}" ]; then
# Steps in order of what is least known; each one's figures are packed as soon as it ends.
# --- 1. the backend interface on the GPU under torch and JAX: the native-kernel GRU (cuDNN, and as
# torch.compile's opaque op) vs keras.layers.GRU, gru_many, Conv1D, two training steps ----------------
step backend_tests 150 python3 -m pytest -q -p no:cacheprovider tests/test_backends*.py -k "not tensorflow"

# --- 2. JAX steps: the reference network (its GRUs share one scan: gru_many), the scan's unroll
# (SCAN_UNROLL 1, 4, 16), conv_pool -----------------------------------------------------------------
step bench_jax_steps 110 env KERAS_BACKEND=jax python3 -m pytest -q -p no:cacheprovider bench/bench_training.py \
  -k "(test_training_step and $STEP_K) or (test_jax_gru_scan_unroll and cuda)" --benchmark-json="$WORK/bench_training_jax.json"
# --- 3. torch eager: steps, sampling, one recording's posterior ------------------------------------
step bench_torch 70 env KERAS_BACKEND=torch python3 -m pytest -q -p no:cacheprovider bench/bench_training.py \
  -k "(test_training_step and $STEP_K) or ($SAMPLE_K)" --benchmark-json="$WORK/bench_training_torch.json"
# --- 4. JAX sampling and one recording's posterior (backends.compile_inference) -------------------
step bench_jax_sampling 60 env KERAS_BACKEND=jax python3 -m pytest -q -p no:cacheprovider bench/bench_training.py \
  -k "$SAMPLE_K" --benchmark-json="$WORK/bench_sampling_jax.json"
# --- 5. CUDA correctness: the simulator vs the float64 reference and the CPU; parity level 3 -------
step gpu_tests 60 env KERAS_BACKEND=torch python3 -m pytest -q -p no:cacheprovider -m gpu \
  tests/test_simulator.py tests/test_parity.py tests/test_dataset.py
# --- 6. torch.compile of the whole step (jit_compile=True) with inductor's CUDA graphs, conv_pool
# first; `steps` prints each network's figures as soon as it has them (compiling conv_pool's step
# takes over 160 s on an H100).
# TORCH_LOGS=perf_hints logs it when inductor skips the CUDA graphs, and why. ------------------------
step torch_jit_cudagraphs 400 env KERAS_BACKEND=torch TORCHINDUCTOR_CUDAGRAPHS=1 TORCH_LOGS=perf_hints python3 bench/bench_training.py \
  steps --kinds conv_pool reference --steps 25 --jit
fi

# --- JAX sampling compiled vs eager (backends.compile_inference): SAMPLING_ONLY=1, its own short call.
# A `reference` model trained 4 epochs (its run's diagnostics use compile_inference), then that
# model's diagnostics sampling in fresh processes, compiled and eager, the compilation cache off.
if [ -n "${SAMPLING_ONLY:-}" ]; then
  step "train_${REF_CONFIG}_4_epochs" 75 env KERAS_BACKEND=jax python3 -m lif_sbi.train --config "$REF_CONFIG" \
    --set training.epochs=4 --results-dir "$WORK/results"
  RUN=$(ls -d "$WORK"/results/"$REF_CONFIG"_jax_* 2>/dev/null | tail -n 1)
  for mode in compiled eager; do  # the eager one gets what is left (a lower bound if it runs out)
    step "sampling_$mode" 80 env KERAS_BACKEND=jax LIF_SBI_JAX_CACHE= python3 bench/inference_compile.py "$RUN" \
      $([ $mode = eager ] && echo --eager)
  done
  step gru_many_torch 40 python3 -m pytest -q -p no:cacheprovider tests/test_backends*.py -k "gru_many_is_one and torch"
fi

# --- the reference configuration end to end: its own call, REF_ONLY="<backend> <jit>" ---------------
if [ -n "${REF_ONLY:-}" ]; then
  read -r REF_BACKEND REF_JIT <<<"$REF_ONLY"
  echo "== reference run under $REF_BACKEND, training.jit_compile=$REF_JIT" | tee -a "$WORK/summary.txt"
  step "train_${REF_CONFIG}_${REF_BACKEND}" 600 env KERAS_BACKEND="$REF_BACKEND" python3 -m lif_sbi.train \
    --config "$REF_CONFIG" --set "training.jit_compile=$REF_JIT" --results-dir "$WORK/results"
  # then, each only if the budget allows it: JAX's compiled sampling against torch's on the card,
  # the backend tests (gru_many under torch, compile_inference, Conv1D, the GRU on meta tensors),
  # the CUDA correctness tests, and torch.compile's conv_pool step with CUDA graphs (its compilation
  # takes over 160 s on an H100, so it runs last)
  for b in jax torch; do
    step "bench_sampling_$b" 50 env KERAS_BACKEND=$b python3 -m pytest -q -p no:cacheprovider bench/bench_training.py \
      -k "$SAMPLE_K" --benchmark-json="$WORK/bench_sampling_$b.json"
  done
  step backend_tests 150 python3 -m pytest -q -p no:cacheprovider tests/test_backends*.py \
    -k "(gru_many_is_one and torch) or compiled_inference or (fast_conv1d and torch) or meta_tensors"
  step gpu_tests 60 env KERAS_BACKEND=torch python3 -m pytest -q -p no:cacheprovider -m gpu \
    tests/test_simulator.py tests/test_parity.py tests/test_dataset.py
  step torch_jit_cudagraphs 400 env KERAS_BACKEND=torch TORCHINDUCTOR_CUDAGRAPHS=1 TORCH_LOGS=perf_hints python3 bench/bench_training.py \
    steps --kinds conv_pool --steps 25 --jit
fi

pack
echo "== summary"
cat "$WORK/summary.txt"
python3 - "$WORK" <<'EOF'
import json, pathlib, sys
for p in sorted(pathlib.Path(sys.argv[1]).glob("bench_*.json")):
    try:
        runs = json.loads(p.read_text())["benchmarks"]
    except ValueError:
        print(f"{p.stem:28s} (empty: its step timed out)")
        continue
    for r in runs:
        print(f"{p.stem:28s} {r['name']:50s} median {r['stats']['median'] * 1e3:9.2f} ms")
EOF
