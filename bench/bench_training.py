"""Benchmarks: one training step and posterior sampling, per summary network, under one backend.

Run once per Keras backend (Keras reads KERAS_BACKEND once per process), e.g.::

    KERAS_BACKEND=tensorflow .venv/bin/python -m pytest bench/bench_training.py \
        --benchmark-json=results/bench_training_tensorflow.json
    KERAS_BACKEND=torch .venv/bin/python -m pytest bench/bench_training.py \
        --benchmark-json=results/bench_training_torch.json

Set LIF_SBI_BENCH_STOCK=1 to add the stock ``bayesflow.networks.TimeSeriesNetwork`` (under torch
one step of it takes ~15 s on a 2-core CPU: it is measured with one round only).
CUDA variants (marked gpu) run only where the backend sees a GPU and skip otherwise.

The file is also a script for the recovery-vs-step-time comparison of summary networks::

    KERAS_BACKEND=torch .venv/bin/python bench/bench_training.py recovery \
        --kinds reference conv_gru conv_pool --n-train 10000 --epochs 4

which trains each candidate on the same simulated traces and prints Pearson r of the posterior
mean vs the truth per parameter on fresh test traces.
"""

from __future__ import annotations

import os
import time

import keras
import numpy as np
import pytest

import bayesflow as bf

from bayesflow.networks.defaults import COUPLING_MLP_DEFAULTS

from lif_sbi import backends
from lif_sbi.estimator import subnet_arguments
from lif_sbi.networks import DEFAULT_SUMMARY_KIND, SUMMARY_KINDS, build_summary_network
from lif_sbi.priors import DISPLAY_SCALE, PARAM_NAMES

BATCH_SIZE = 64
SAMPLE_TRACES = 100
SAMPLE_DRAWS = 500
TRACE_SCALE = 1e3  # V -> mV for the network input (standardised afterwards by BayesFlow)
DATA_CACHE = os.environ.get("LIF_SBI_BENCH_CACHE", "/tmp/lif_sbi_bench_cache")


# --------------------------------------------------------------------------------------------
# helpers (shared by the benchmarks and the recovery script)


def simulate(n: int, seed: int) -> dict[str, np.ndarray]:
    """`n` simulated traces as BayesFlow input: parameters in display units, traces in mV.

    Cached under DATA_CACHE (the simulator is deterministic per seed).
    """
    path = os.path.join(DATA_CACHE, f"sim_{n}_{seed}.npz")
    if os.path.exists(path):
        with np.load(path) as f:
            return dict(f)
    from lif_sbi.simulator import simulate_batch

    d = simulate_batch(n, seed=seed)
    out = {
        "theta": (d["parameters"] * DISPLAY_SCALE).astype("float32"),
        "x": (d["observables"] * TRACE_SCALE).astype("float32"),
    }
    os.makedirs(DATA_CACHE, exist_ok=True)
    np.savez(path, **out)
    return out


def make_adapter() -> bf.Adapter:
    return (
        bf.Adapter()
        .convert_dtype("float64", "float32")
        .rename("theta", "inference_variables")
        .rename("x", "summary_variables")
    )


def make_summary(kind: str):
    if kind == "stock":
        return bf.networks.TimeSeriesNetwork()
    return build_summary_network(kind)


def make_approximator(kind: str, data: dict, *, seed: int = 0, learning_rate: float = 1e-3, subnet: str = "mlp", jit_compile="auto"):
    """CouplingFlow (BayesFlow defaults; coupling subnet `subnet`, see lif_sbi.estimator.subnet_arguments)
    + summary network `kind`, compiled (Keras' `jit_compile`, as `training.jit_compile`) and built on
    `data`; its sampling as the estimator's (`backends.compile_inference`)."""
    backends.set_seed(seed)
    approximator = bf.ContinuousApproximator(
        adapter=make_adapter(),
        inference_network=bf.networks.CouplingFlow(**subnet_arguments(subnet, COUPLING_MLP_DEFAULTS["dropout"])),
        summary_network=make_summary(kind),
        standardize=("inference_variables", "summary_variables"),
    )
    backends.compile_inference(approximator)  # sampling as lif_sbi.estimator's approximators sample
    approximator.compile(optimizer=keras.optimizers.Adam(learning_rate), jit_compile=jit_compile)
    batch = adapted_batch(approximator, data, slice(0, BATCH_SIZE))
    approximator.build_from_data(batch)
    return approximator


def adapted_batch(approximator, data: dict, index) -> dict:
    raw = {k: v[index] for k, v in data.items()}
    return {k: keras.ops.convert_to_tensor(v) for k, v in approximator.adapter(raw).items()}


# --------------------------------------------------------------------------------------------
# benchmarks

# reference, the default and every other candidate (the default is chosen on these figures)
SUMMARY_BENCH_KINDS = ["reference", DEFAULT_SUMMARY_KIND] + [k for k in SUMMARY_KINDS if k not in ("reference", DEFAULT_SUMMARY_KIND)]
if os.environ.get("LIF_SBI_BENCH_STOCK"):
    SUMMARY_BENCH_KINDS.append("stock")


@pytest.fixture(scope="module")
def bench_data():
    return simulate(512, seed=1234)


DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("gpu", id="cuda", marks=pytest.mark.gpu)]


@pytest.fixture
def on_device(request):
    """Run the test body under ``keras.device(...)``; the GPU variant skips without a GPU."""
    device = request.param
    has_gpu = backends.device_name() != "CPU"
    if device == "gpu" and not has_gpu:
        pytest.skip("no CUDA device")
    if device == "cpu" and has_gpu:
        with keras.device("cpu:0"):
            yield device
    else:  # the backend's default device is the one asked for
        yield device


# BayesFlow's coupling MLP for every summary network; the fused subnet (lif_sbi.subnets) for the
# reference and the default summary networks; all compiled as Keras' jit_compile="auto" does.
# LIF_SBI_BENCH_JIT=1 adds the same four cases with jit_compile=True (under torch: torch.compile
# of the whole step, 1-3 minutes of compilation per case on a 2-core CPU, excluded from the
# figure; the reference network about 2-4 minutes, its GRUs compiled as one opaque op each).
STEP_CASES = [(kind, "mlp", "auto") for kind in SUMMARY_BENCH_KINDS] + [("reference", "fused", "auto"), (DEFAULT_SUMMARY_KIND, "fused", "auto")]
if os.environ.get("LIF_SBI_BENCH_JIT"):
    STEP_CASES += [(kind, subnet, True) for kind in ("reference", DEFAULT_SUMMARY_KIND) for subnet in ("mlp", "fused")]


@pytest.mark.parametrize("kind, subnet, jit_compile", STEP_CASES, ids=[f"{k}-{s}" + ("-jit" if j is True else "") for k, s, j in STEP_CASES])
@pytest.mark.parametrize("on_device", DEVICES, indirect=True)
def test_training_step(benchmark, bench_data, kind, subnet, jit_compile, on_device):
    """One optimizer step, batch 64, CouplingFlow + summary network (forward, backward, update)."""
    _time_training_step(benchmark, bench_data, kind, subnet, jit_compile, on_device)


@pytest.mark.jax
@pytest.mark.parametrize("unroll", [1, 4, 16])
@pytest.mark.parametrize("on_device", DEVICES, indirect=True)
def test_jax_gru_scan_unroll(benchmark, bench_data, unroll, on_device, monkeypatch):
    """The reference network's training step under JAX with the GRU scan's ``unroll`` at 1, 4, 16
    time steps per loop iteration (backends/jax.py, SCAN_UNROLL): which one each device wants."""
    if backends.name != "jax":
        pytest.skip("the GRU scan's unroll is JAX's")
    monkeypatch.setattr(backends.module, "SCAN_UNROLL", unroll)
    _time_training_step(benchmark, bench_data, "reference", "mlp", "auto", on_device)
    benchmark.extra_info.update(scan_unroll=unroll)


def _use_torch_gru_kernel(kernel: str, monkeypatch) -> None:
    """Run this benchmark's eager torch GRUs on the fused CPU kernel or on PyTorch's native one
    (as LIF_SBI_NATIVE_GRU=1 does); skip under other backends or where the kernel is not built."""
    if backends.name != "torch":
        pytest.skip("the fused CPU GRU kernel is torch's")
    from lif_sbi.backends.torch import gru_kernel

    if kernel == "native":
        monkeypatch.setitem(gru_kernel._cpu_kernel_state, "module", None)
    elif gru_kernel._cpu_kernel() is None:
        pytest.skip("the fused CPU GRU kernel could not be built here")


@pytest.mark.torch
@pytest.mark.parametrize("kernel", ["fused", "native"])
@pytest.mark.parametrize("on_device", DEVICES[:1], indirect=True)
def test_torch_cpu_gru_kernel(benchmark, bench_data, kernel, on_device, monkeypatch):
    """The reference network's training step under torch on the CPU with its GRUs on the fused
    kernel (backends/torch/gru_cpu.cpp, the default) vs PyTorch's native one (LIF_SBI_NATIVE_GRU=1)."""
    _use_torch_gru_kernel(kernel, monkeypatch)
    _time_training_step(benchmark, bench_data, "reference", "mlp", "auto", on_device)
    benchmark.extra_info.update(gru_kernel=kernel)


@pytest.mark.torch
@pytest.mark.parametrize("kernel", ["fused", "native"])
@pytest.mark.parametrize("grad", [False, True], ids=["forward", "forward_backward"])
def test_torch_cpu_gru_pass(benchmark, kernel, grad, monkeypatch):
    """One GRU the size of the reference network's (batch 64, 501 steps, 32 inputs, 128 units) on
    one CPU thread, under torch: the forward pass without autograd (sampling) or forward and
    backward (training), on the fused kernel vs PyTorch's native one."""
    _use_torch_gru_kernel(kernel, monkeypatch)
    import torch

    from lif_sbi.backends.torch import gru_ops

    gen = torch.Generator().manual_seed(0)
    x, h0 = torch.randn(BATCH_SIZE, 501, 32, generator=gen), torch.zeros(1, BATCH_SIZE, 128)
    params = [0.1 * torch.randn(*shape, generator=gen) for shape in ((384, 32), (384, 128), (384,), (384,))]
    inputs = [t.requires_grad_(grad) for t in (x, h0, *params)]

    def run():
        with torch.set_grad_enabled(grad):
            outputs, last = gru_ops._eager_gru(inputs[0], inputs[1], inputs[2:], grad)
            if grad:
                torch.autograd.grad(outputs.sum() + last.sum(), inputs)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each GRU of gru_many runs on a 2-core CPU
    try:
        benchmark.pedantic(run, rounds=7, iterations=1, warmup_rounds=1)
    finally:
        torch.set_num_threads(threads)
    benchmark.extra_info.update(backend=backends.name, gru_kernel=kernel, grad=grad)


@pytest.mark.torch
@pytest.mark.parametrize("kind", ["reference", DEFAULT_SUMMARY_KIND])
@pytest.mark.parametrize("record", [True, False], ids=["recorded", "eager"])
@pytest.mark.parametrize("on_device", DEVICES, indirect=True)
def test_torch_recorded_step(benchmark, bench_data, kind, record, on_device):
    """torch's training step recorded once and replayed (training.record_steps, the default: a CUDA
    graph on a GPU, a traced aten program on the CPU) vs eager: the same step without Keras'
    Python (and, on a GPU, kernel launches) around it. On the CPU the reference network's step
    stays eager (its GRUs cannot be traced), so there both cases time the eager step."""
    if backends.name != "torch":
        pytest.skip("recorded eager steps are torch's")
    _time_training_step(benchmark, bench_data, kind, "mlp", "auto", on_device, record_steps=record)
    benchmark.extra_info.update(record_steps=record)


@pytest.mark.torch
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "replayed"])
@pytest.mark.parametrize("on_device", DEVICES[:1], indirect=True)
def test_torch_compiled_step(benchmark, bench_data, compiled, on_device, monkeypatch):
    """torch on the CPU, the default network: the recorded step compiled by inductor
    (training.compile_steps, the default: after COMPILE_AFTER replays of a shape; here after one,
    in the warm-up) vs the plain replay of the traced program."""
    if backends.name != "torch":
        pytest.skip("compiled recorded steps are torch's")
    from lif_sbi.backends.torch import steps as torch_steps

    monkeypatch.setattr(torch_steps._TracedSteps, "COMPILE_AFTER", 1)
    _time_training_step(benchmark, bench_data, DEFAULT_SUMMARY_KIND, "mlp", "auto", on_device, compile_steps=compiled)
    benchmark.extra_info.update(compile_steps=compiled)


@pytest.mark.parametrize("adam", ["flat", "keras"])
@pytest.mark.parametrize("on_device", DEVICES[:1], indirect=True)
def test_torch_adam_on_flat_buffers(benchmark, bench_data, adam, on_device, monkeypatch):
    """torch on the CPU, the default network's recorded step with Keras' Adam on three flat buffers
    (the default, ``_adam_on_flat_buffers``) vs Keras' own per-variable foreach update."""
    if backends.name != "torch":
        pytest.skip("Adam on flat buffers is torch's")
    if adam == "keras":
        from lif_sbi.backends.torch import steps as torch_steps

        monkeypatch.setattr(torch_steps, "_adam_on_flat_buffers", lambda model: None)
    _time_training_step(benchmark, bench_data, DEFAULT_SUMMARY_KIND, "mlp", "auto", on_device)
    benchmark.extra_info.update(adam=adam)


def torch_warmup_steps(compile_steps: bool) -> int:
    """Steps before a torch step runs as training runs it from then on: the eager steps and the
    recording (``_RecordedSteps.WARMUP`` + 1), and with ``compile_steps`` the replays before the
    compilation and the compiling step (``_TracedSteps.COMPILE_AFTER`` + 1). The same count
    serves the other backends, whose first call traces."""
    if backends.name != "torch":
        return 3
    from lif_sbi.backends.torch import steps as torch_steps

    steps = torch_steps._TracedSteps
    return steps.WARMUP + 1 + (steps.COMPILE_AFTER + 1 if compile_steps else 0)


def _time_training_step(benchmark, bench_data, kind, subnet, jit_compile, on_device, *, record_steps=True, compile_steps=False):
    """Times the step as training runs it (under torch with a few warm-up steps: recorded and
    replayed; compiled with ``compile_steps`` once ``_TracedSteps.COMPILE_AFTER`` replays are
    in the warm-up)."""
    approximator = make_approximator(kind, bench_data, subnet=subnet, jit_compile=jit_compile)
    step = backends.train_step_function(approximator, record_steps=record_steps, compile_steps=compile_steps)
    batches = [adapted_batch(approximator, bench_data, slice(i, i + BATCH_SIZE)) for i in range(0, 512, BATCH_SIZE)]
    counter = iter(range(10**9))

    def run():
        metrics = step(batches[next(counter) % len(batches)])
        return float(keras.ops.convert_to_numpy(metrics["loss"]))

    first_call_s = None
    # warm-up / tracing; under torch the third call records the step (and with compile_steps the
    # call after COMPILE_AFTER replays compiles it)
    for _ in range(torch_warmup_steps(compile_steps) if kind != "stock" or backends.name != "torch" else 0):
        t0 = time.perf_counter()
        run()
        first_call_s = time.perf_counter() - t0 if first_call_s is None else first_call_s
    rounds = 1 if kind == "stock" and backends.name == "torch" else 5
    loss = benchmark.pedantic(run, rounds=rounds, iterations=1)
    # first_call_s: the first step, tracing and compilation included (gpu_session.sh weighs it)
    benchmark.extra_info.update(backend=backends.name, device="CPU" if on_device == "cpu" else backends.device_name(), kind=kind, subnet=subnet,
                                jit_compile=bool(approximator.jit_compile), batch=BATCH_SIZE, first_call_s=first_call_s)
    assert np.isfinite(loss)


@pytest.mark.parametrize("kind", [k for k in SUMMARY_BENCH_KINDS if k != "stock"])
@pytest.mark.parametrize("on_device", DEVICES, indirect=True)
def test_posterior_sampling(benchmark, bench_data, kind, on_device):
    """Posterior sampling, 100 traces x 500 draws (summary network + flow inverse)."""
    approximator = make_approximator(kind, bench_data)
    conditions = {"x": bench_data["x"][:SAMPLE_TRACES]}

    def run():
        return approximator.sample(num_samples=SAMPLE_DRAWS, conditions=conditions)

    for _ in range(2):  # warm-up: JAX compiles on the first call (torch traces a shape's flow after
        run()            # more calls than these: test_recorded_sampling measures that)
    samples = benchmark.pedantic(run, rounds=3, iterations=1)
    benchmark.extra_info.update(
        backend=backends.name, device="CPU" if on_device == "cpu" else backends.device_name(), kind=kind, traces=SAMPLE_TRACES, draws=SAMPLE_DRAWS
    )
    assert samples["theta"].shape == (SAMPLE_TRACES, SAMPLE_DRAWS, len(PARAM_NAMES))


@pytest.mark.parametrize("traces,draws", [(1, 1000), (SAMPLE_TRACES, SAMPLE_DRAWS)], ids=["1x1000", "100x500"])
@pytest.mark.parametrize("sampler", ["traced", "eager"])  # "traced": recorded (torch: traced; TensorFlow: tf.function)
@pytest.mark.parametrize("on_device", DEVICES, indirect=True)
def test_recorded_sampling(benchmark, bench_data, traces, draws, sampler, on_device):
    """torch and TensorFlow, the default network: posterior sampling with the flow's pass recorded
    per batch shape (backends.compile_inference, the default: a traced aten program, a
    tf.function) vs BayesFlow's eager sampler."""
    if backends.name == "jax":
        pytest.skip("JAX's compiled sampling is test_posterior_sampling's and test_posterior_one_trace's")
    from bayesflow.approximators.helpers.samplers import Sampler

    approximator = make_approximator(DEFAULT_SUMMARY_KIND, bench_data)
    if sampler == "eager":
        approximator.sampler = Sampler()
    conditions = {"x": bench_data["x"][:traces]}

    def run():
        return approximator.sample(num_samples=draws, conditions=conditions)

    for _ in range(approximator.sampler.WARMUP + 1 if sampler == "traced" else 2):  # warm-up: eager calls, then the recording
        run()
    samples = benchmark.pedantic(run, rounds=7, iterations=1)
    benchmark.extra_info.update(backend=backends.name, device="CPU" if on_device == "cpu" else backends.device_name(), sampler=sampler,
                                traces=traces, draws=draws)
    assert samples["theta"].shape == (traces, draws, len(PARAM_NAMES))


@pytest.mark.parametrize("kind", [k for k in SUMMARY_BENCH_KINDS if k != "stock"])
@pytest.mark.parametrize("on_device", DEVICES, indirect=True)
def test_posterior_one_trace(benchmark, bench_data, kind, on_device):
    """One recording's posterior, 1 trace x 1,000 draws: the latency of inferring a user's trace
    (the summary network's fixed cost per call, e.g. a recompilation, shows here, not in the
    100-trace figure)."""
    approximator = make_approximator(kind, bench_data)
    conditions = {"x": bench_data["x"][:1]}

    def run():
        return approximator.sample(num_samples=1000, conditions=conditions)

    for _ in range(2):  # warm-up: JAX compiles on the first call (torch traces a shape's flow after
        run()            # more calls than these: test_recorded_sampling measures that)
    samples = benchmark.pedantic(run, rounds=7, iterations=1)
    benchmark.extra_info.update(backend=backends.name, device="CPU" if on_device == "cpu" else backends.device_name(), kind=kind, traces=1, draws=1000)
    assert samples["theta"].shape == (1, 1000, len(PARAM_NAMES))


@pytest.mark.parametrize("writer", ["keras_hdf5", "npz"])
def test_checkpoint_weights_write(benchmark, bench_data, writer, tmp_path):
    """The reference model's weights written once, as every epoch's checkpoint (and each new best
    epoch's weights) are: Keras' HDF5 ``save_weights`` (until 2026-11-26) vs one .npz of
    ``get_weights()`` (lif_sbi.runner since)."""
    from lif_sbi import runner

    approximator = make_approximator("reference", bench_data)
    if writer == "keras_hdf5":
        run = lambda: approximator.save_weights(str(tmp_path / "w.weights.h5"))  # noqa: E731
    else:
        run = lambda: runner._save_weights_npz(approximator, tmp_path / "w.weights.npz")  # noqa: E731
    benchmark.pedantic(run, rounds=7, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(backend=backends.name, weights=len(approximator.weights))


@pytest.mark.parametrize("impl", ["keras", "lif_sbi"])
@pytest.mark.parametrize("on_device", DEVICES, indirect=True)
def test_conv_stack_step(benchmark, impl, on_device):
    """The default network's four strided convolutions alone, one SGD step (forward, backward,
    update; batch 64 x 501 x 1, mish, a linear read-out): Keras' Conv1D vs lif_sbi.networks.Conv1D
    (backends.conv1d; under torch a channels-last 2-D convolution)."""
    import torch

    from lif_sbi.networks import Conv1D

    cls = keras.layers.Conv1D if impl == "keras" else Conv1D
    backends.set_seed(0)
    model = keras.Sequential([keras.Input((501, 1))]
                             + [cls(f, 5, strides=2, padding="same", activation="mish") for f in (32, 64, 64, 64)]
                             + [keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse")
    rng = np.random.default_rng(0)
    x = keras.ops.convert_to_tensor(rng.normal(size=(BATCH_SIZE, 501, 1)).astype("float32"))
    y = keras.ops.convert_to_tensor(rng.normal(size=(BATCH_SIZE, 1)).astype("float32"))
    step = backends.train_step_function(model)

    def run():
        # importing BayesFlow turns torch's autograd off process-wide (its approximators turn it
        # back on in their own steps); a plain Keras model needs it on. No effect under TF / JAX.
        with torch.enable_grad():
            return float(keras.ops.convert_to_numpy(step((x, y))["loss"]))

    for _ in range(3):  # warm-up / tracing
        run()
    loss = benchmark.pedantic(run, rounds=10, iterations=1)
    benchmark.extra_info.update(backend=backends.name, device="CPU" if on_device == "cpu" else backends.device_name(), impl=impl)
    assert np.isfinite(loss)


# --------------------------------------------------------------------------------------------
# recovery script


def recovery(kind: str, *, n_train: int, epochs: int, n_test: int = 400, draws: int = 500, seed: int = 0) -> dict:
    """Train `kind` for a fixed budget; return step time and Pearson r per parameter."""
    train = simulate(n_train, seed=seed)
    test = simulate(n_test, seed=seed + 10_000)
    approximator = make_approximator(kind, train, seed=seed)
    step = backends.train_step_function(approximator)
    rng = np.random.default_rng(seed)
    n_batches = n_train // BATCH_SIZE
    step_times = []
    t0 = time.perf_counter()
    for epoch in range(epochs):
        order = rng.permutation(n_train)
        losses = []
        for b in range(n_batches):
            batch = adapted_batch(approximator, train, order[b * BATCH_SIZE : (b + 1) * BATCH_SIZE])
            ts = time.perf_counter()
            metrics = step(batch)
            losses.append(float(keras.ops.convert_to_numpy(metrics["loss"])))
            step_times.append(time.perf_counter() - ts)
        print(f"  {kind} epoch {epoch + 1}/{epochs}: loss {np.mean(losses):.3f}", flush=True)
    train_s = time.perf_counter() - t0
    ts = time.perf_counter()
    post = approximator.sample(num_samples=draws, conditions={"x": test["x"]})["theta"]
    sample_s = time.perf_counter() - ts
    mean = post.mean(axis=1)
    r = {name: float(np.corrcoef(mean[:, i], test["theta"][:, i])[0, 1]) for i, name in enumerate(PARAM_NAMES)}
    return {
        "kind": kind,
        "step_s": float(np.median(step_times[5:] if len(step_times) > 10 else step_times)),
        "train_s": train_s,
        "sample_s": sample_s,
        "params": int(sum(np.prod(v.shape) for v in approximator.summary_network.trainable_variables)),
        "r": r,
        "final_loss": float(np.mean(losses)),
    }


def profile_steps(step, batch, n: int) -> None:
    """Print torch.profiler's table of aten ops (self CPU time) over `n` steps, and its total per step."""
    from torch.profiler import ProfilerActivity, profile  # torch only: the profiler of the eager step

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            float(keras.ops.convert_to_numpy(step(batch)["loss"]))
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=15))
    aten_ms = sum(e.self_cpu_time_total for e in events if e.key.startswith("aten::")) / 1e3 / n
    print(f"aten ops' self CPU time: {aten_ms:.1f} ms per step (under the profiler)", flush=True)


def main(argv=None):
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("recovery", help="recovery vs training-step time per summary network")
    rec.add_argument("--kinds", nargs="+", default=["reference", "conv_gru", "conv_pool"])
    rec.add_argument("--n-train", type=int, default=10_000)
    rec.add_argument("--epochs", type=int, default=4)
    rec.add_argument("--seed", type=int, default=0)
    rec.add_argument("--json", default=None, help="append results as JSON lines to this file")
    st = sub.add_parser("steps", help="time a few training steps per summary network (quick, no pytest)")
    st.add_argument("--kinds", nargs="+", default=["reference", "conv_gru", "conv_pool"])
    st.add_argument("--steps", type=int, default=6)
    st.add_argument("--subnet", choices=["mlp", "fused"], default="mlp", help="coupling subnet (lif_sbi.estimator.subnet_arguments)")
    st.add_argument("--profile", action="store_true", help="torch backend: also print torch.profiler's op table over 10 more steps")
    st.add_argument("--no-record", action="store_true", help="torch: eager steps, not recorded and replayed (training.record_steps = false)")
    st.add_argument("--compile", action="store_true",
                    help="torch on the CPU: the recorded step compiled by inductor after one replay (training.compile_steps; training waits for 200)")
    st.add_argument("--jit", action="store_true", help="compile the model with jit_compile=True (torch: torch.compile of the step; its first call compiles)")
    st.add_argument("--compile-times", action="store_true",
                    help="torch backend with --jit or --compile: print torch._dynamo's compile-time table (run with TORCHINDUCTOR_FORCE_DISABLE_CACHES=1 for a cold compilation)")
    args = parser.parse_args(argv)
    print(f"backend {backends.name} on {backends.device_name()}")
    if args.cmd == "steps":
        data = simulate(512, seed=1234)
        for kind in args.kinds:
            approximator = make_approximator(kind, data, subnet=args.subnet, jit_compile=True if args.jit else "auto")
            if args.compile:
                from lif_sbi.backends.torch import steps as torch_steps

                torch_steps._TracedSteps.COMPILE_AFTER = 1
            step = backends.train_step_function(approximator, record_steps=not args.no_record, compile_steps=args.compile)
            batch = adapted_batch(approximator, data, slice(0, BATCH_SIZE))
            times = []
            warmup = torch_warmup_steps(compile_steps=True) if args.compile else 1
            for _ in range(args.steps + warmup):
                t0 = time.perf_counter()
                float(keras.ops.convert_to_numpy(step(batch)["loss"]))
                times.append(time.perf_counter() - t0)
                if len(times) == 1:
                    print(f"  {kind}: first step (tracing/compilation) {times[0]:.1f} s", flush=True)
            if args.compile:
                print(f"  {kind}: the compiling step {times[warmup - 1]:.1f} s", flush=True)
            print(json.dumps({"backend": backends.name, "kind": kind, "subnet": args.subnet, "jit_compile": bool(approximator.jit_compile),
                              "compile_steps": args.compile, "median_s_after_warmup": float(np.median(times[warmup:])), "times_s": times}), flush=True)
            if args.profile:
                profile_steps(step, batch, n=10)

        if args.compile_times:
            import torch  # torch only: dynamo's own record of where compilation went

            print(torch._dynamo.utils.compile_times(repr="str", aggregate=True), flush=True)
        return
    for kind in args.kinds:
        res = recovery(kind, n_train=args.n_train, epochs=args.epochs, seed=args.seed)
        res |= {"backend": backends.name, "n_train": args.n_train, "epochs": args.epochs}
        print(json.dumps(res), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
