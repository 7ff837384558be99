"""lif_sbi.backends: FastGRU equals keras.layers.GRU(reset_after=True) under every backend.

Keras reads KERAS_BACKEND once per process, so each backend runs in a subprocess.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(backend: str, code: str, timeout: int = 300, env: dict | None = None) -> dict:
    """Run `code` under KERAS_BACKEND=`backend` (and `env`); it must print one JSON line last."""
    env = os.environ | {"KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONHASHSEED": "0"} | (env or {})
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(f"{backend} subprocess failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _backend_params():
    return [
        pytest.param("torch", marks=pytest.mark.torch),
        pytest.param(
            "tensorflow",
            marks=[
                pytest.mark.tensorflow,
                pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="tensorflow not installed"),
            ],
        ),
        pytest.param(
            "jax",
            marks=[pytest.mark.jax, pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax not installed")],
        ),
    ]


BACKENDS = _backend_params()

# Gradient of a scalar loss w.r.t. inputs and weights, per backend, in one function `grads`.
GRAD_HELPERS = """
import keras, numpy as np
from lif_sbi import backends

# Full float32 on a GPU: by default cuDNN's convolutions (torch) and XLA's matrix products and
# convolutions (JAX, TensorFlow) round to TF32 on Ampere and later (~1e-3 relative), and two
# different algorithms for the same layer then differ by more than these tests' 1e-5.
if backends.name == "torch":
    import torch
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
elif backends.name == "jax":
    import jax
    jax.config.update("jax_default_matmul_precision", "highest")
else:
    import tensorflow as tf
    tf.config.experimental.enable_tensor_float_32_execution(False)

def grads(layer, x, w):
    # d/d(x, weights) of sum(layer(x) * w)
    name = backends.name
    if name == "torch":
        import torch
        # on Keras' default device (CUDA where there is one), as the layer's weights are
        xt = keras.ops.convert_to_tensor(x).detach().requires_grad_(True)
        with torch.enable_grad():
            y = layer(xt)
            loss = (y * keras.ops.convert_to_tensor(w)).sum()
            gs = torch.autograd.grad(loss, [xt] + [v.value for v in layer.trainable_weights])
        return [g.detach().cpu().numpy() for g in gs]
    if name == "tensorflow":
        import tensorflow as tf
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = layer(xt)
            loss = tf.reduce_sum(y * w)
        gs = tape.gradient(loss, [xt] + [v.value for v in layer.trainable_weights])
        return [g.numpy() for g in gs]
    import jax
    def f(x, weights):
        y, _ = layer.stateless_call(weights, [v.value for v in layer.non_trainable_variables], x)
        return (y * w).sum()
    gx, gw = jax.grad(f, argnums=(0, 1))(x, [v.value for v in layer.trainable_weights])
    return [np.asarray(gx)] + [np.asarray(g) for g in gw]
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_fast_gru_matches_keras_gru(backend):
    """Same weights and inputs: outputs within 1e-5, gradients (inputs, weights) within 1e-4."""
    code = (
        GRAD_HELPERS
        + """
import json
from lif_sbi.networks import FastGRU
backends.set_seed(0)
rng = np.random.default_rng(0)
x = rng.normal(size=(5, 37, 3)).astype("float32")
out = {"backend": backends.name, "device": backends.device_name(), "cases": []}
for return_sequences in (True, False):
    ref = keras.layers.GRU(8, return_sequences=return_sequences, reset_after=True)
    ref.build((None, 37, 3))
    ref.cell.bias.assign(rng.normal(scale=0.5, size=(2, 24)).astype("float32"))
    fast = FastGRU(8, return_sequences=return_sequences)
    fast.build((None, 37, 3))
    fast.set_weights(ref.get_weights())
    assert [v.name for v in fast.weights] == ["kernel", "recurrent_kernel", "bias"]
    assert [tuple(v.shape) for v in fast.weights] == [tuple(v.shape) for v in ref.weights]
    y_ref = keras.ops.convert_to_numpy(ref(x))
    y_fast = keras.ops.convert_to_numpy(fast(x))
    w = rng.normal(size=y_ref.shape).astype("float32")
    g_ref, g_fast = grads(ref, x, w), grads(fast, x, w)
    out["cases"].append({
        "return_sequences": return_sequences,
        "shape": list(y_fast.shape),
        "out_err": float(np.abs(y_ref - y_fast).max()),
        "grad_err": [float(np.abs(a - b).max()) for a, b in zip(g_ref, g_fast)],
        "grad_scale": [float(np.abs(a).max()) for a in g_ref],
    })
print(json.dumps(out))
"""
    )
    res = run_script(backend, code)
    assert res["backend"] == backend
    assert [c["return_sequences"] for c in res["cases"]] == [True, False]
    assert res["cases"][0]["shape"] == [5, 37, 8]
    assert res["cases"][1]["shape"] == [5, 8]
    for case in res["cases"]:
        assert case["out_err"] < 1e-5, case
        assert len(case["grad_err"]) == 4  # inputs, kernel, recurrent_kernel, bias
        assert max(case["grad_err"]) < 1e-4, case
        assert min(case["grad_scale"]) > 1e-3, case  # gradients are not trivially zero


@pytest.mark.parametrize("backend", BACKENDS)
def test_gru_many_is_one_gru_after_another(backend):
    """backends.gru_many gives what one backends.gru after another gives: outputs and gradients
    (inputs and weights), with and without return_sequences; under torch it runs the GRUs side by
    side on threads (checked), for training and for inference, and leaves the thread count as it was;
    under JAX the GRUs of one shape share one scan (checked)."""
    code = (
        GRAD_HELPERS
        + """
import json
backends.set_seed(0)
rng = np.random.default_rng(0)
# independent GRUs of different lengths and widths, as in the reference network
shapes = [(6, 41, 3, 8), (6, 41, 3, 8), (6, 11, 12, 8)]
calls = [
    [rng.normal(size=(b, t, i)).astype("float32"), (0.4 * rng.normal(size=(i, 3 * u))).astype("float32"),
     (0.4 * rng.normal(size=(u, 3 * u))).astype("float32"), (0.3 * rng.normal(size=(2, 3 * u))).astype("float32")]
    for b, t, i, u in shapes
]
if backends.name == "torch":
    import torch
    torch.set_num_threads(2)  # the side-by-side path needs two intra-op threads, whatever the machine has
    # the side-by-side path is the CPU's: keep the GRUs there on a GPU machine too (Keras would move
    # the tensors to CUDA, where gru_many runs one GRU after the other; H100, 2026-11-26). The
    # scope is kept in a name: an unreferenced one is finalised at once, which leaves it again (so
    # the first version of this line did nothing, and the test failed again on an H200).
    on_cpu = keras.device("cpu:0")
    on_cpu.__enter__()

def run(many, return_sequences):
    if backends.name == "torch":
        tensors = [[torch.tensor(a, requires_grad=True) for a in call] for call in calls]
        with torch.enable_grad():
            if many:
                ys = backends.gru_many(tensors, return_sequences=return_sequences)
            else:
                ys = [backends.gru(*c, return_sequences=return_sequences) for c in tensors]
            loss = sum((y * (k + 1.0) * torch.linspace(-1, 1, y.shape[-1])).sum() for k, y in enumerate(ys))
            gs = torch.autograd.grad(loss, [t for c in tensors for t in c])
        return [y.detach().numpy() for y in ys], [g.numpy() for g in gs]
    if backends.name == "tensorflow":
        import tensorflow as tf
        tensors = [[tf.constant(a) for a in call] for call in calls]
        with tf.GradientTape() as tape:
            for c in tensors:
                for t in c:
                    tape.watch(t)
            if many:
                ys = backends.gru_many(tensors, return_sequences=return_sequences)
            else:
                ys = [backends.gru(*c, return_sequences=return_sequences) for c in tensors]
            loss = sum(tf.reduce_sum(y * (k + 1.0) * tf.linspace(-1.0, 1.0, y.shape[-1])) for k, y in enumerate(ys))
        gs = tape.gradient(loss, [t for c in tensors for t in c])
        return [y.numpy() for y in ys], [g.numpy() for g in gs]
    import jax, jax.numpy as jnp
    def f(flat):
        cs = [flat[4 * i: 4 * i + 4] for i in range(len(calls))]
        ys = backends.gru_many(cs, return_sequences=return_sequences) if many else [backends.gru(*c, return_sequences=return_sequences) for c in cs]
        return sum((y * (k + 1.0) * jnp.linspace(-1, 1, y.shape[-1])).sum() for k, y in enumerate(ys)), ys
    (_, ys), gs = jax.value_and_grad(f, has_aux=True)([jnp.asarray(a) for c in calls for a in c])
    return [np.asarray(y) for y in ys], [np.asarray(g) for g in gs]

out = {"cases": []}
for return_sequences in (True, False):
    (y1, g1), (y2, g2) = run(False, return_sequences), run(True, return_sequences)
    out["cases"].append({
        "shapes": [list(y.shape) for y in y2],
        "out_err": max(float(np.abs(a - b).max()) for a, b in zip(y1, y2)),
        "grad_err": max(float(np.abs(a - b).max() / (np.abs(a).max() + 1e-12)) for a, b in zip(g1, g2)),
        "n_grads": len(g2),
    })
if backends.name == "torch":
    from lif_sbi.backends import torch as tb
    out["threaded"] = bool(tb._POOLS)
    out["threads_after"] = torch.get_num_threads()
    tb._POOLS.clear()
    with torch.no_grad():  # inference: side by side as well, no autograd graph
        ys = backends.gru_many([[torch.tensor(a) for a in c] for c in calls], return_sequences=False)
    ref = [backends.gru(*[torch.tensor(a) for a in c], return_sequences=False) for c in calls]
    out["no_grad_err"] = max(float((a - b).abs().max()) for a, b in zip(ys, ref))
    out["no_grad_threaded"] = bool(tb._POOLS)
    # only some inputs need gradients (frozen weights, constant inputs)
    tensors = [[torch.tensor(a, requires_grad=(j == 1)) for j, a in enumerate(c)] for c in calls]
    with torch.enable_grad():
        ys = backends.gru_many(tensors, return_sequences=False)
        sum(y.sum() for y in ys).backward()
    out["partial_grads"] = [[t.grad is not None for t in c] for c in tensors]
    torch.set_num_threads(1)  # one thread: one GRU after the other, same values
    tb._POOLS.clear()
    with torch.enable_grad():
        ys = backends.gru_many([[torch.tensor(a) for a in c] for c in calls], return_sequences=True)
    ref = [backends.gru(*[torch.tensor(a) for a in c], return_sequences=True) for c in calls]
    out["one_thread_err"] = max(float((a - b).abs().max()) for a, b in zip(ys, ref))
    out["one_thread_threaded"] = bool(tb._POOLS)
if backends.name == "jax":  # the two GRUs of one shape share one scan: two XLA while loops, not three
    import jax, jax.numpy as jnp
    many = jax.jit(lambda flat: backends.gru_many([flat[4 * i: 4 * i + 4] for i in range(3)], return_sequences=False))
    out["loops"] = many.lower([jnp.asarray(a) for c in calls for a in c]).compile().as_text().count(" while(")
print(json.dumps(out))
"""
    )
    res = run_script(backend, code)
    assert [c["shapes"] for c in res["cases"]] == [[[6, 41, 8], [6, 41, 8], [6, 11, 8]], [[6, 8]] * 3]
    for case in res["cases"]:  # 1e-5: float32 rounding of one batched product vs two (JAX, GPU)
        assert case["n_grads"] == 12
        assert case["out_err"] < 1e-5, case
        assert case["grad_err"] < 1e-5, case
    if backend == "torch":
        assert res["threaded"] and res["no_grad_threaded"], res
        assert res["threads_after"] == 2
        assert res["no_grad_err"] < 1e-6
        assert res["partial_grads"] == [[False, True, False, False]] * 3
        assert res["one_thread_err"] == 0 and not res["one_thread_threaded"], res
    if backend == "jax":
        assert res["loops"] == 2, res


@pytest.mark.jax
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax not installed")
def test_jax_gru_called_eagerly_compiles_once_per_shape():
    """Under JAX, Keras runs inference (sampling, lif_sbi.infer) eagerly. A FastGRU called again on
    inputs of the same shape must reuse its compiled scan: the scan over a step function created
    anew in every call compiled again each time (one recording's posterior with the reference
    network: 458 vs 64 ms on the CPU, bench/bench_training.py -k test_posterior_one_trace).
    Counts XLA backend compilations with jax.monitoring."""
    code = """
import json, jax.monitoring, keras, numpy as np
from lif_sbi.networks import FastGRU, build_summary_network
events = []
jax.monitoring.register_event_duration_secs_listener(lambda name, _duration, **kw: events.append(name))
compiles = lambda: sum(name == "/jax/core/compile/backend_compile_duration" for name in events)
out = {}
gru = FastGRU(8)
x = np.random.default_rng(0).normal(size=(3, 40, 2)).astype("float32")
gru(x)
before = compiles()
gru(x)
gru(x + 1.0)
out["fast_gru_again"] = compiles() - before
net = build_summary_network("reference", summary_dim=4)
y = np.random.default_rng(1).normal(size=(1, 101, 1)).astype("float32")
net(y)
net(y)
before = compiles()
net(y)
out["reference_again"] = compiles() - before
out["counted_any"] = compiles() > 0
print(json.dumps(out))
"""
    res = run_script("jax", code)
    assert res["counted_any"], res  # the listener sees compilations at all
    assert res["fast_gru_again"] == 0, res
    assert res["reference_again"] == 0, res


@pytest.mark.jax
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax not installed")
def test_jax_compiled_inference_draws_what_eager_sampling_draws():
    """Under JAX, estimator-built approximators sample through jitted programs
    (backends.compile_inference): the same draws as BayesFlow's eager sampling (same seed; and,
    unseeded, from the same generator state) within float32 rounding, the generators advanced
    alike; a new input shape costs a few XLA compilations where eager sampling costs dozens, and a
    repeated one none (jax.monitoring). Saving and loading keeps working and loads compiled."""
    code = """
import json, tempfile, jax.monitoring, keras, numpy as np
from bayesflow.approximators.helpers.conditions import ConditionBuilder
from bayesflow.approximators.helpers.samplers import Sampler
from lif_sbi import backends, estimator
from lif_sbi.config import load_config
events = []
jax.monitoring.register_event_duration_secs_listener(lambda name, _duration, **kw: events.append(name))
compiles = lambda: sum(name == "/jax/core/compile/backend_compile_duration" for name in events)
backends.set_seed(0)
cfg = load_config("ci").model
approx = estimator.build_approximator(cfg)
rng = np.random.default_rng(0)
data = {"parameters": rng.uniform(size=(8, 6)), "observables": rng.normal(size=(8, 501, 1))}
approx.build_from_data(approx.adapter(data))
x = rng.normal(-0.065, 0.01, size=(5, 501, 1)).astype("float32")
out = {"sampler": type(approx.sampler).__name__, "builder": type(approx.condition_builder).__name__}
def draw(seed=None, n=5, k=7):
    return approx.sample(num_samples=k, conditions={"observables": x[:n]}, batch_size=3, seed=seed)["parameters"]
state = lambda: [np.asarray(v.value) for v in approx.inference_network.non_trainable_variables]
def restore(values):
    for v, a in zip(approx.inference_network.non_trainable_variables, values):
        v.assign(a)
before = compiles(); jit_seeded = draw(seed=3); out["compiles_new_shape_jit"] = compiles() - before
before = compiles(); again = draw(seed=3); out["compiles_same_shape_jit"] = compiles() - before
out["same_seed_same_draws"] = bool(np.array_equal(jit_seeded, again))
start = state(); jit_unseeded = [draw(), draw()]; after_jit = state()
jitted = approx.sampler, approx.condition_builder
approx.sampler, approx.condition_builder = Sampler(), ConditionBuilder()
restore(start); eager_unseeded = [draw(), draw()]; after_eager = state()
eager_seeded = draw(seed=3)
before = compiles(); draw(seed=3, n=4, k=9); out["compiles_new_shape_eager"] = compiles() - before
approx.sampler, approx.condition_builder = jitted
before = compiles(); draw(seed=3, n=4, k=9); out["compiles_new_shape_jit_2"] = compiles() - before
out["seeded_err"] = float(np.abs(jit_seeded - eager_seeded).max() / np.abs(eager_seeded).max())
out["unseeded_err"] = max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(jit_unseeded, eager_unseeded))
out["unseeded_calls_differ"] = bool(np.abs(jit_unseeded[0] - jit_unseeded[1]).max() > 0)
out["generators_alike"] = all(np.array_equal(a, b) for a, b in zip(after_jit, after_eager))
out["generators_moved"] = not all(np.array_equal(a, b) for a, b in zip(start, after_jit))
with tempfile.TemporaryDirectory() as d:
    approx.save(d + "/m.keras")
    loaded = estimator.load_approximator(d + "/m.keras")
out["loaded_sampler"] = type(loaded.sampler).__name__
out["loaded_err"] = float(np.abs(loaded.sample(num_samples=7, conditions={"observables": x}, batch_size=3, seed=3)["parameters"] - eager_seeded).max())
print(json.dumps(out))
"""
    res = run_script("jax", code)
    assert (res["sampler"], res["builder"], res["loaded_sampler"]) == ("_JitSampler", "_JitConditionBuilder", "_JitSampler"), res
    assert res["seeded_err"] < 1e-5 and res["unseeded_err"] < 1e-5 and res["loaded_err"] < 1e-4, res
    assert res["same_seed_same_draws"] and res["unseeded_calls_differ"], res
    assert res["generators_alike"] and res["generators_moved"], res
    assert res["compiles_same_shape_jit"] == 0, res
    # a new shape: one program per batch shape for the summary network and one for the flow (two
    # batch shapes here: 3 + 2 traces), against one per operation eagerly
    assert 0 < res["compiles_new_shape_jit_2"] <= 6 < 3 * res["compiles_new_shape_jit_2"] <= res["compiles_new_shape_eager"], res


@pytest.mark.parametrize("backend,device", [pytest.param("torch", "cpu", marks=pytest.mark.torch),
                                            pytest.param("torch", "cuda", marks=[pytest.mark.torch, pytest.mark.gpu]),
                                            pytest.param("tensorflow", "cpu", marks=[pytest.mark.tensorflow, pytest.mark.skipif(
                                                importlib.util.find_spec("tensorflow") is None, reason="tensorflow not installed")])])
def test_recorded_sampling_draws_what_eager_sampling_draws(backend, device):
    """Under torch and TensorFlow, estimator-built approximators sample through recorded flow
    programs (backends.compile_inference, _common.RecordedSampler: a traced aten program under
    torch, a tf.function under TensorFlow): a shape's first WARMUP calls eager, the next
    recorded, later ones replayed; the same draws as BayesFlow's eager sampling (bit for bit under
    torch on the CPU; within float32 rounding otherwise), seeded, and unseeded from the same
    generator state, the generators advanced alike; another shape gets its own program; on the
    CPU a batch of more than MAX_CPU_DRAWS draws stays eager (on CUDA it is recorded too); a
    recording that fails (here the flow reads a value into Python) leaves its shape eager with the
    eager draws; a loaded model samples the same way."""
    code = """
import json, tempfile, keras, numpy as np
from bayesflow.approximators.helpers.samplers import Sampler
from lif_sbi import backends, estimator
from lif_sbi.config import load_config
backends.set_seed(0)
approx = estimator.build_approximator(load_config("ci").model)
rng = np.random.default_rng(0)
data = {"parameters": rng.uniform(size=(8, 6)), "observables": rng.normal(size=(8, 501, 1))}
approx.build_from_data(approx.adapter(data))
x = rng.normal(-0.065, 0.01, size=(5, 501, 1)).astype("float32")
out = {"device": backends.device_name(), "sampler": type(approx.sampler).__name__}
def draw(seed=None, n=5, k=7):
    return approx.sample(num_samples=k, conditions={"observables": x[:n]}, batch_size=3, seed=seed)["parameters"]
state = lambda: [keras.ops.convert_to_numpy(v.value).copy() for v in approx.inference_network.non_trainable_variables]
def restore(values):
    for v, a in zip(approx.inference_network.non_trainable_variables, values):
        v.assign(a)
traced = approx.sampler
W = traced.WARMUP
seeded = [draw(seed=3) for _ in range(W + 2)]  # eager W times, traced, replayed (two batch shapes: 3 and 2 traces)
out["programs"] = sorted(str(v is not None) for v in traced._programs.values())
start = state(); unseeded = [draw() for _ in range(3)]; after = state()  # replayed
approx.sampler = Sampler()
eager_seeded = draw(seed=3)
restore(start); eager_unseeded = [draw() for _ in range(3)]; after_eager = state()
approx.sampler = traced
other = [draw(seed=4, n=4, k=9) for _ in range(W + 2)]
big = draw(seed=5, n=3, k=2000)  # 6,000 draws per batch: on the CPU above MAX_CPU_DRAWS, eager
for _ in range(W + 1):
    draw(seed=5, n=3, k=2000)
out["big_traced"] = any(key[1][0] == 6000 and v is not None for key, v in traced._programs.items())
approx.sampler = Sampler(); eager_other = draw(seed=4, n=4, k=9)
big_eager = draw(seed=5, n=3, k=2000)
err = lambda a, b: float(np.abs(a - b).max() / np.abs(b).max())
out["seeded_err"] = max(err(a, eager_seeded) for a in seeded)
out["unseeded_err"] = max(err(a, b) for a, b in zip(unseeded, eager_unseeded))
out["other_err"] = max(err(a, eager_other) for a in other)
out["big_err"] = err(big, big_eager)
out["unseeded_calls_differ"] = bool(np.abs(unseeded[1] - unseeded[2]).max() > 0)
out["generators_alike"] = all(np.array_equal(a, b) for a, b in zip(after, after_eager))
# a flow that reads a value into Python: its trace fails, the shape stays eager
approx.sampler = type(traced)()
call = approx.inference_network.call
def reading_call(*args, **kwargs):
    float(keras.ops.sum(args[0]))
    return call(*args, **kwargs)
approx.inference_network.call = reading_call
failing = [draw(seed=3) for _ in range(W + 2)]
approx.inference_network.call = call
out["failed_programs"] = sorted(str(v is not None) for v in approx.sampler._programs.values())
out["failed_err"] = max(err(a, eager_seeded) for a in failing)
with tempfile.TemporaryDirectory() as d:
    approx.save(d + "/m.keras")
    loaded = estimator.load_approximator(d + "/m.keras")
out["loaded_sampler"] = type(loaded.sampler).__name__
out["loaded_err"] = max(err(loaded.sample(num_samples=7, conditions={"observables": x}, batch_size=3, seed=3)["parameters"], eager_seeded) for _ in range(W + 2))
out["loaded_programs"] = len([v for v in loaded.sampler._programs.values() if v is not None])
print(json.dumps(out))
"""
    res = run_script(backend, code, env={"CUDA_VISIBLE_DEVICES": ""} if device == "cpu" else None)
    assert (res["device"] == "CPU") == (device == "cpu"), res
    assert res["sampler"] == res["loaded_sampler"] == {"torch": "_TracedSampler", "tensorflow": "_GraphSampler"}[backend], res
    assert res["programs"] == ["True", "True"] and res["failed_programs"] == ["False", "False"] and res["loaded_programs"] == 2, res
    tol = 0.0 if (backend, device) == ("torch", "cpu") else 1e-5  # torch replays the same aten operations: on the CPU the same bits
    assert res["big_traced"] == (device == "cuda"), res  # on the CPU large batches stay eager (compute-bound)
    for name in ("seeded_err", "unseeded_err", "other_err", "failed_err", "loaded_err", "big_err"):
        assert res[name] <= tol, (name, res)
    assert res["unseeded_calls_differ"] and res["generators_alike"], res


@pytest.mark.jax
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax not installed")
def test_jax_keeps_compiled_programs_for_the_next_process(tmp_path):
    """Under JAX, XLA's compiled programs go to a persistent cache (LIF_SBI_JAX_CACHE): a second
    process running the same eager GRU loads them instead of compiling (JAX's cache-hit events).
    LIF_SBI_JAX_CACHE="" turns the cache off; a cache folder given to JAX itself is kept."""
    code = """
import json, jax, jax.monitoring, numpy as np
from lif_sbi import backends
from lif_sbi.networks import FastGRU
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
FastGRU(8)(np.random.default_rng(0).normal(size=(3, 40, 2)).astype("float32"))
print(json.dumps({"dir": backends.module.compilation_cache_dir, "config_dir": jax.config.jax_compilation_cache_dir,
                  "hits": events.count("/jax/compilation_cache/cache_hits")}))
"""
    ours = tmp_path / "lif_sbi_jax"
    first = run_script("jax", code, env={"LIF_SBI_JAX_CACHE": str(ours)})
    assert first["dir"] == str(ours) and first["hits"] == 0, first
    assert any(ours.iterdir())
    second = run_script("jax", code, env={"LIF_SBI_JAX_CACHE": str(ours)})
    assert second["hits"] >= 1, second
    off = run_script("jax", code, env={"LIF_SBI_JAX_CACHE": ""})
    assert off["dir"] is None and not off["config_dir"] and off["hits"] == 0, off
    theirs = tmp_path / "their_own"
    kept = run_script("jax", code, env={"LIF_SBI_JAX_CACHE": str(ours), "JAX_COMPILATION_CACHE_DIR": str(theirs)})
    assert kept["dir"] == kept["config_dir"] == str(theirs), kept


@pytest.mark.tensorflow
@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="tensorflow not installed")
def test_tensorflow_gru_called_eagerly_runs_one_graph_function():
    """Under TensorFlow, Keras runs inference eagerly. The CPU scan then runs as one traced graph
    function, traced once for repeated calls of one shape (eagerly, tf.foldl would run one Python
    step per time step: 1.1 s vs 0.2 s for one recording's posterior with the reference network,
    bench/bench_training.py -k test_posterior_one_trace), and gives what the inlined scan gives."""
    code = """
import json, keras, numpy as np, tensorflow as tf
from lif_sbi.backends import tensorflow as tb
from lif_sbi.networks import FastGRU
gru = FastGRU(8, return_sequences=True)
x = np.random.default_rng(0).normal(size=(3, 40, 2)).astype("float32")
y1 = keras.ops.convert_to_numpy(gru(x))
y2 = keras.ops.convert_to_numpy(gru(x + 1.0))
traces = tb._scan_gru_graph.experimental_get_tracing_count()
inline = tb._scan_gru_inline(tf.constant(x), tf.zeros((3, 8)), gru.kernel.value, gru.recurrent_kernel.value, gru.bias.value, True)
print(json.dumps({"traces": traces, "err": float(np.abs(y1 - inline.numpy()).max())}))
"""
    res = run_script("tensorflow", code)
    assert res["traces"] == 1, res
    assert res["err"] < 1e-6, res


@pytest.mark.torch
def test_fast_gru_under_torch_compile_is_one_graph_with_the_eager_gradients():
    """Under torch.compile the torch GRU is an opaque op (lif_sbi::gru) instead of aten::gru's
    unrolled 37-cell decomposition: FastGRU traces into one graph, and the compiled forward and
    backward give the eager path's outputs and gradients (the backward op recomputes the native
    forward and differentiates it), on Keras' default device (cuDNN on a GPU).
    torch.library.opcheck checks the op's fake (shape) kernel and autograd registration."""
    code = """
import json, keras, numpy as np, torch
from lif_sbi import backends
from lif_sbi.networks import FastGRU
backends.set_seed(0)
rng = np.random.default_rng(0)
x = keras.ops.convert_to_tensor(rng.normal(size=(5, 37, 3)).astype("float32"))
out = {"device": backends.device_name(), "cases": []}
for return_sequences in (True, False):
    fast = FastGRU(8, return_sequences=return_sequences)
    fast.build((None, 37, 3))
    fast.bias.assign(rng.normal(scale=0.5, size=(2, 24)).astype("float32"))
    w = keras.ops.convert_to_tensor(rng.normal(size=(5, 37, 8) if return_sequences else (5, 8)).astype("float32"))

    def loss(x):
        with torch.enable_grad():
            return (fast(x, training=True) * w).sum()

    def value_and_grads(f):
        xt = x.clone().requires_grad_(True)
        with torch.enable_grad():
            value = f(xt)
            gs = torch.autograd.grad(value, [xt] + [v.value for v in fast.trainable_weights])
        return [value.detach().cpu().numpy()] + [g.detach().cpu().numpy() for g in gs]

    eager = value_and_grads(loss)
    compiled = value_and_grads(torch.compile(loss, fullgraph=True))
    explained = torch._dynamo.explain(loss)(x)
    out["cases"].append({"graphs": explained.graph_count, "ops": sorted({str(n.target) for g in explained.graphs
                                                                         for n in g.graph.nodes if "lif_sbi" in str(n.target)}),
                         "err": [float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30)) for a, b in zip(eager, compiled)],
                         "scale": [float(np.abs(a).max()) for a in eager]})
    torch._dynamo.reset()
op = backends.module._compiled_gru
args = [x, torch.zeros(1, 5, 8, device=x.device)] + [torch.randn(*s, device=x.device) for s in ((24, 3), (24, 8), (24,), (24,))]
torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
print(json.dumps(out))
"""
    res = run_script("torch", code)
    assert len(res["cases"]) == 2
    for case in res["cases"]:
        assert case["graphs"] == 1 and case["ops"] == ["lif_sbi.gru.default"], case
        assert len(case["err"]) == 5  # loss, inputs, kernel, recurrent_kernel, bias
        assert case["err"][0] < 1e-5 and max(case["err"][1:]) < 1e-4, case
        assert min(case["scale"]) > 1e-3, case


@pytest.mark.torch
def test_torch_fused_cpu_gru_matches_native_gru():
    """Under torch on the CPU in float32, eager GRUs run on the fused kernel (backends/gru_cpu.cpp),
    which builds here, and it agrees with PyTorch's native GRU: outputs within 1e-5, gradients
    (inputs, initial state, weights, biases) within 1e-5 relative, for a long sequence, a single
    step and one unit; without autograd too; a NaN in the input gives NaN out, as the native GRU's
    does. LIF_SBI_NATIVE_GRU=1 turns it off."""
    code = """
import json, keras, numpy as np, torch
from lif_sbi import backends
tb = backends.module
torch.manual_seed(0)
on_cpu = keras.device("cpu:0")  # the fused kernel is the CPU's; keep a GPU machine's tensors there
on_cpu.__enter__()  # (named: an unreferenced scope is finalised, and left, at once)
out = {"built": tb._cpu_kernel() is not None, "cases": []}
for b, t, d, h in [(16, 301, 32, 64), (4, 1, 3, 5), (2, 9, 1, 1)]:
    x, h0 = torch.randn(b, t, d), 0.5 * torch.randn(1, b, h)
    params = [0.3 * torch.randn(3 * h, d), 0.3 * torch.randn(3 * h, h), 0.3 * torch.randn(3 * h), 0.3 * torch.randn(3 * h)]
    fused_in = [a.clone().requires_grad_() for a in (x, h0, *params)]
    native_in = [a.clone().requires_grad_() for a in (x, h0, *params)]
    with torch.enable_grad():
        y, last = tb._eager_gru(fused_in[0], fused_in[1], fused_in[2:], True)
        y_ref, last_ref = tb._native_gru(native_in[0], native_in[1], native_in[2:], True)
        gy, gl = torch.randn_like(y_ref), torch.randn_like(last_ref)
        g = torch.autograd.grad((y, last), fused_in, (gy, gl))
        g_ref = torch.autograd.grad((y_ref, last_ref), native_in, (gy, gl))
    with torch.no_grad():
        y_nograd, last_nograd = tb._eager_gru(x, h0, params, False)
        x_nan = x.clone()
        x_nan[0, 0, 0] = float("nan")  # the kernel saturates its gates: a NaN must not vanish there
        nan_out = bool(torch.isnan(tb._eager_gru(x_nan, h0, params, False)[1]).any())
    out["cases"].append({
        "nan_out": nan_out,
        "node": type(y.grad_fn).__name__,
        "shapes": [list(y.shape), list(last.shape)],
        "out_err": max(float((y - y_ref).abs().max()), float((last - last_ref).abs().max())),
        "nograd_err": max(float((y_nograd - y_ref).abs().max()), float((last_nograd - last_ref).abs().max())),
        "grad_err": [float((a - r).abs().max() / r.abs().max().clamp_min(1e-30)) for a, r in zip(g, g_ref)],
        "grad_scale": [float(r.abs().max()) for r in g_ref],
    })
print(json.dumps(out))
"""
    res = run_script("torch", code)
    assert res["built"], res
    assert [c["shapes"] for c in res["cases"]] == [[[16, 301, 64], [1, 16, 64]], [[4, 1, 5], [1, 4, 5]], [[2, 9, 1], [1, 2, 1]]]
    for case in res["cases"]:
        assert case["node"] == "_FusedCpuGRUBackward", case  # the fused kernel ran, not the native one
        assert case["nan_out"], case
        assert case["out_err"] < 1e-5 and case["nograd_err"] < 1e-5, case
        assert len(case["grad_err"]) == 6 and max(case["grad_err"]) < 1e-5, case
        assert min(case["grad_scale"]) > 1e-3, case
    off = run_script("torch", """
import json, os
os.environ["LIF_SBI_NATIVE_GRU"] = "1"
from lif_sbi import backends
print(json.dumps({"kernel": repr(backends.module._cpu_kernel())}))
""")
    assert off["kernel"] == "None", off


@pytest.mark.torch
def test_torch_gru_falls_back_to_the_native_kernel_where_the_fused_one_cannot_be_built():
    """No C++ compiler (here: cpp_extension.load fails): one warning naming the reason, and the
    GRU runs on PyTorch's native kernel with the same values."""
    code = """
import json, warnings, torch
from torch.utils import cpp_extension
def no_compiler(*args, **kwargs):
    raise RuntimeError("Ninja is required to load C++ extensions")
cpp_extension.load = no_compiler
from lif_sbi import backends
tb = backends.module
x, h0 = torch.randn(3, 7, 2), torch.zeros(1, 3, 4)
params = [torch.randn(12, 2), torch.randn(12, 4), torch.randn(12), torch.randn(12)]
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    y, _ = tb._eager_gru(x, h0, params, False)
    y2, _ = tb._eager_gru(x, h0, params, False)
ref, _ = tb._native_gru(x, h0, params, False)
print(json.dumps({"messages": [str(w.message) for w in caught], "err": float((y - ref).abs().max()),
                  "kernel": repr(tb._cpu_kernel())}))
"""
    res = run_script("torch", code)
    assert res["kernel"] == "None" and res["err"] == 0, res
    assert len(res["messages"]) == 1, res  # once per process, not per call
    assert "could not be built (Ninja is required" in res["messages"][0] and "native GRU" in res["messages"][0], res


@pytest.mark.torch
def test_torch_fused_gru_kernel_builds_past_a_stale_lock(tmp_path, monkeypatch):
    """A process killed while it built or loaded the kernel leaves cpp_extension's lock file,
    and every later process would wait on it forever. A lock older than ten minutes is removed;
    here the kernel is built from scratch in an empty TORCH_EXTENSIONS_DIR that holds one. The
    build is announced in one line on stderr; loading the built kernel says nothing."""
    code = """
import json, os, time
from lif_sbi import backends
tb = backends.module
lock = os.path.join(tb._cpu_kernel_build_dir(), "lock")
os.makedirs(os.path.dirname(lock), exist_ok=True)
open(lock, "w").close()
os.utime(lock, (time.time() - 3600, time.time() - 3600))  # left by a process killed an hour ago
import contextlib, io
said = io.StringIO()
with contextlib.redirect_stderr(said):
    kernel = tb._cpu_kernel()
    again = tb._build_cpu_kernel()  # built now: loaded without a word
print(json.dumps({"built": kernel is not None and again is not None, "lock_left": os.path.exists(lock),
                  "in_tmp": tb._cpu_kernel_build_dir().startswith(os.environ["TORCH_EXTENSIONS_DIR"]), "stderr": said.getvalue()}))
"""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))  # run_script passes os.environ on
    res = run_script("torch", code, timeout=300)  # a build takes ~25 s; without the fix this waits forever
    assert res["built"] and res["in_tmp"] and not res["lock_left"], res
    assert res["stderr"].count("building the fused CPU GRU kernel") == 1, res  # said once, when it builds


@pytest.mark.torch
def test_torch_gru_infers_shapes_on_meta_tensors_without_running():
    """Keras infers a layer's output shape under torch by running it on meta tensors (building,
    loading a saved model); there the GRU returns empty tensors of the right shapes instead of
    running PyTorch's GRU, which on meta tensors steps through time in Python (1.6 s for one
    reference-sized GRU). Checked: shapes and dtype, and no native GRU call while the reference
    summary network is built and a model holding it is loaded."""
    code = """
import json, tempfile, keras, numpy as np, torch
from lif_sbi import backends, estimator
from lif_sbi.config import load_config
tb = backends.module
meta = lambda *shape: torch.empty(*shape, device="meta")
y, h = tb._eager_gru(meta(5, 501, 3), meta(1, 5, 7), [meta(21, 3), meta(21, 7), meta(21), meta(21)], True)
out = {"shapes": [list(y.shape), list(h.shape)], "devices": [y.device.type, h.device.type], "dtype": str(y.dtype)}
calls = []
native = tb._native_gru
def counting(x, h0, params, train):
    calls.append(x.device.type)
    return native(x, h0, params, train)
tb._native_gru = counting
tb._cpu_kernel_state["module"] = None  # the native kernel on real tensors, so that every GRU call is seen
cfg = load_config("ci", ["model.summary_network=reference"]).model
approx = estimator.build_approximator(cfg)
rng = np.random.default_rng(0)
data = {"parameters": rng.uniform(size=(4, 6)), "observables": rng.normal(size=(4, 501, 1))}
approx.build_from_data(approx.adapter(data))
with tempfile.TemporaryDirectory() as d:
    approx.save(d + "/m.keras")
    calls.clear()
    loaded = estimator.load_approximator(d + "/m.keras")
    out["load_calls"] = list(calls)
    loaded.summarize({"observables": data["observables"]})
    out["real_calls"] = sorted(set(calls))
out["device"] = keras.ops.zeros(()).device.type  # where Keras computes: the CPU, or CUDA on a GPU
print(json.dumps(out))
"""
    res = run_script("torch", code)
    assert res["shapes"] == [[5, 501, 7], [1, 5, 7]] and res["devices"] == ["meta", "meta"] and res["dtype"] == "torch.float32", res
    assert "meta" not in res["load_calls"], res
    assert res["real_calls"] == [res["device"]], res  # the counter sees the GRU when it does run


@pytest.mark.torch
def test_torch_gru_backward_op_never_returns_aliased_tensors():
    """A custom op's outputs may alias neither its inputs nor each other (torch checks this when
    the op runs; it failed on an H100, most likely on cuDNN's weight gradients, views of one flat
    buffer). The op clones such outputs. Here views of one buffer and an input stand in for them."""
    code = """
import json, torch
from lif_sbi import backends
flat = torch.arange(12.0)
x = torch.ones(3)
a, b, c = flat[:4], flat[4:8], flat[8:]
out = backends.module._unaliased([a, b, x, c, torch.zeros(2)], [x])
ptrs = [t.untyped_storage().data_ptr() for t in out]
print(json.dumps({"distinct": len(set(ptrs)) == len(ptrs), "x_kept_out": x.untyped_storage().data_ptr() not in ptrs,
                  "values": [t.tolist() for t in out], "first_kept": out[0].data_ptr() == a.data_ptr()}))
"""
    res = run_script("torch", code)
    assert res["distinct"] and res["x_kept_out"], res
    assert res["first_kept"], res  # the first view of the buffer needs no copy
    assert res["values"] == [[0, 1, 2, 3], [4, 5, 6, 7], [1, 1, 1], [8, 9, 10, 11], [0, 0]]


CONV_CASES = [  # (time, in, out, kernel, stride, padding): odd and even lengths, Keras' asymmetric "same"
    (501, 1, 32, 5, 2, "same"), (126, 64, 64, 5, 2, "same"), (37, 3, 8, 4, 4, "same"),
    (40, 3, 8, 3, 1, "same"), (37, 3, 8, 5, 2, "valid"), (501, 1, 32, 3, 1, "same"),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_fast_conv1d_matches_keras_conv1d(backend):
    """lif_sbi.networks.Conv1D (backends.conv1d) vs keras.layers.Conv1D with the same weights: outputs within
    1e-5 and gradients (inputs, kernel, bias) within 1e-4, relative to their largest magnitude."""
    code = (
        GRAD_HELPERS
        + """
import json
from lif_sbi.networks import Conv1D as FastConv1D
rng = np.random.default_rng(0)
out = {"backend": backends.name, "cases": []}
for t, cin, cout, k, s, pad in CASES:
    x = rng.normal(size=(4, t, cin)).astype("float32")
    ref = keras.layers.Conv1D(cout, k, strides=s, padding=pad, activation="mish")
    fast = FastConv1D(cout, k, strides=s, padding=pad, activation="mish")
    ref.build((None, t, cin)); fast.build((None, t, cin))
    ref.bias.assign(rng.normal(scale=0.3, size=(cout,)).astype("float32"))
    fast.set_weights(ref.get_weights())
    y_ref, y_fast = keras.ops.convert_to_numpy(ref(x)), keras.ops.convert_to_numpy(fast(x))
    w = rng.normal(size=y_ref.shape).astype("float32")
    g_ref, g_fast = grads(ref, x, w), grads(fast, x, w)
    out["cases"].append({"shape": [list(y_ref.shape), list(y_fast.shape)],
                         "out_err": float(np.abs(y_ref - y_fast).max() / np.abs(y_ref).max()),
                         "grad_err": [float(np.abs(a - b).max() / np.abs(a).max()) for a, b in zip(g_ref, g_fast)]})
print(json.dumps(out))
""".replace("CASES", repr(CONV_CASES))
    )
    res = run_script(backend, code)
    assert res["backend"] == backend and len(res["cases"]) == len(CONV_CASES)
    for case, (t, cin, cout, k, s, pad) in zip(res["cases"], CONV_CASES):
        expected_t = -(-t // s) if pad == "same" else (t - k) // s + 1
        assert case["shape"] == [[4, expected_t, cout]] * 2, case
        assert case["out_err"] < 1e-5, case
        assert len(case["grad_err"]) == 3 and max(case["grad_err"]) < 1e-4, case


def test_fast_conv1d_refuses_what_it_does_not_implement():
    from lif_sbi.networks import Conv1D as FastConv1D

    for kwargs in ({"padding": "causal"}, {"dilation_rate": 2}, {"groups": 2}):
        with pytest.raises(ValueError, match="lif_sbi.networks.Conv1D supports"):
            FastConv1D(4, 3, **kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_interface(backend):
    """The chosen module matches KERAS_BACKEND; set_seed makes Keras draws repeatable without
    loading TensorFlow under another backend; train_step_function trains a freshly compiled model."""
    code = """
import json, sys, keras
from lif_sbi import backends
backends.set_seed(3)
a = keras.ops.convert_to_numpy(keras.random.normal((4,))).tolist()
backends.set_seed(3)
b = keras.ops.convert_to_numpy(keras.random.normal((4,))).tolist()
tf_loaded = "tensorflow" in sys.modules
import numpy as np
from lif_sbi.config import ModelConfig
from lif_sbi.dataset import simulate_dataset
from lif_sbi.estimator import build_approximator
approx = build_approximator(ModelConfig(summary_network="conv_pool", summary_dim=4, flow_depth=1))
approx.compile(optimizer=keras.optimizers.Adam(1e-3))
batch = {k: keras.ops.convert_to_tensor(v) for k, v in approx.adapter(simulate_dataset(32, 1, progress=False)).items()}
approx.build_from_data(batch)
before = [keras.ops.convert_to_numpy(v).copy() for v in approx.trainable_variables]
step = backends.train_step_function(approx)
losses = [float(keras.ops.convert_to_numpy(step(batch)["loss"])) for _ in range(2)]
changed = sum(not np.array_equal(w, keras.ops.convert_to_numpy(v)) for w, v in zip(before, approx.trainable_variables))
print(json.dumps({"name": backends.name, "module": backends.module.__name__, "device": backends.device_name(),
                  "a": a, "b": b, "tf_loaded": tf_loaded, "losses": losses, "changed": changed, "n_vars": len(before)}))
"""
    res = run_script(backend, code)
    assert res["name"] == backend
    assert res["module"] == f"lif_sbi.backends.{backend}"
    assert isinstance(res["device"], str) and res["device"]
    assert res["a"] == res["b"]
    if backend != "tensorflow":
        assert not res["tf_loaded"], "set_seed imported TensorFlow (its start-up lines reach the console)"
    assert all(np.isfinite(res["losses"])), res
    assert res["changed"] == res["n_vars"], res  # every trainable variable was updated


def test_only_backends_branch_on_backend_name():
    """Nothing outside backends/ looks at the Keras backend's name (DESIGN.md §3)."""
    offenders = []
    for folder in ("lif_sbi",):
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for f in files:
                if f.endswith(".py"):
                    text = open(os.path.join(dirpath, f), encoding="utf-8").read()
                    if "backend.backend()" in text:
                        offenders.append(os.path.join(dirpath, f))
    assert not offenders, offenders


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_jit_compiled_step_matches_eager(backend):
    """training.jit_compile=true trains the same as the eager step: from the same weights, three
    steps on the same batches give the same losses and weight updates (torch: torch.compile of the
    step, about a minute of compilation per network on a 2-core CPU; TensorFlow: XLA; JAX: jax.jit
    vs eager JAX), for a convolutional network and one with GRUs (under torch, the opaque GRU op).

    Plain SGD, so that an update is the gradient times the rate: Adam divides by sqrt(v) + eps,
    which turns float32 summation-order differences in near-zero gradients into update
    differences of up to 5 % of the rate (measured, torch.compile and XLA alike)."""
    code = """
import json, keras, numpy as np
from lif_sbi import backends
from lif_sbi.config import ModelConfig
from lif_sbi.dataset import simulate_dataset
from lif_sbi.estimator import build_approximator
from lif_sbi.networks import FastGRU
data = simulate_dataset(96, 5, progress=False)
out = {}
for kind, jit in [(k, j) for k in ("conv_pool", "conv_gru") for j in (False, True)]:
    backends.set_seed(11)
    approx = build_approximator(ModelConfig(summary_network=kind, summary_dim=4, flow_depth=1, flow_dropout=0.0))
    # no dropout: a compiled step draws its masks from another generator (inductor's) than an
    # eager one, which changes every gradient by far more than rounding does
    for layer in approx.summary_network._flatten_layers():
        if isinstance(layer, FastGRU):
            layer.dropout = 0.0
    approx.compile(optimizer=keras.optimizers.SGD(1e-2), jit_compile=jit)
    batches = [{k: keras.ops.convert_to_tensor(v) for k, v in approx.adapter({k2: v2[i:i + 32] for k2, v2 in data.items()}).items()}
               for i in (0, 32, 64)]
    approx.build_from_data(batches[0])
    before = [keras.ops.convert_to_numpy(v).ravel().copy() for v in approx.trainable_variables]
    step = backends.train_step_function(approx)
    losses = [float(keras.ops.convert_to_numpy(step(b)["loss"])) for b in batches]
    out[f"{kind} {jit}"] = {"resolved": bool(approx.jit_compile), "losses": losses,
                            "updates": [(keras.ops.convert_to_numpy(v).ravel() - w).tolist() for v, w in zip(approx.trainable_variables, before)],
                            "weight_scale": [float(np.abs(w).max()) for w in before]}
print(json.dumps(out))
"""
    res = run_script(backend, code, timeout=1500)
    for kind in ("conv_pool", "conv_gru"):
        eager, jit = res[f"{kind} False"], res[f"{kind} True"]
        assert not eager["resolved"] and jit["resolved"]
        np.testing.assert_allclose(jit["losses"], eager["losses"], rtol=1e-4, atol=1e-5, err_msg=kind)
        assert len(jit["updates"]) == len(eager["updates"])
        for a, b, scale in zip(jit["updates"], eager["updates"], eager["weight_scale"]):
            b = np.asarray(b)
            assert np.abs(b).max() > 0, kind  # every variable moved
            # An update is a difference of float32 weights, so it resolves nothing below their
            # spacing: updates of ~1e-7 on weights of ~0.1 land on multiples of 7.5e-9 (JAX,
            # conv_gru: one of 16,384 entries one spacing apart).
            resolution = 2 * float(np.spacing(np.float32(scale)))
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=max(1e-3 * np.abs(b).max(), resolution), err_msg=kind)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_jit_compiled_step_follows_the_learning_rate_schedule(backend):
    """A compiled step reads the schedule's rate at every step, as the eager step does: it is not
    frozen at the value it was traced with. Cosine decay to 0 over 4 steps, Adam: the first
    update is about the initial rate (Adam's first step moves each weight by ~lr), the fourth
    about lr(3) = 1.46e-3, and the fifth and sixth are exactly 0 (lr = 0). Rules out one cause
    of the compiled and eager `default` runs parting ways in epoch 1 (bench/RESULTS.md)."""
    code = """
import json, keras, numpy as np
from lif_sbi import backends
from lif_sbi.config import ModelConfig
from lif_sbi.dataset import simulate_dataset
from lif_sbi.estimator import build_approximator
data = simulate_dataset(64, 5, progress=False)
out = {}
for jit in (False, True):
    backends.set_seed(11)
    approx = build_approximator(ModelConfig(summary_network="conv_pool", summary_dim=4, flow_depth=1, flow_dropout=0.0))
    schedule = keras.optimizers.schedules.CosineDecay(1e-2, decay_steps=4, alpha=0.0)
    approx.compile(optimizer=keras.optimizers.Adam(schedule), jit_compile=jit)
    batch = {k: keras.ops.convert_to_tensor(v) for k, v in approx.adapter({k2: v2[:32] for k2, v2 in data.items()}).items()}
    approx.build_from_data(batch)
    step = backends.train_step_function(approx)
    updates = []
    for _ in range(6):
        before = [keras.ops.convert_to_numpy(v).copy() for v in approx.trainable_variables]
        step(batch)
        updates.append(max(float(np.abs(keras.ops.convert_to_numpy(v) - w).max()) for v, w in zip(approx.trainable_variables, before)))
    out[str(jit)] = {"resolved": bool(approx.jit_compile), "updates": updates}
print(json.dumps(out))
"""
    res = run_script(backend, code, timeout=900)
    eager, jit = res["False"], res["True"]
    assert not eager["resolved"] and jit["resolved"]
    for case in (eager, jit):
        u = case["updates"]
        assert 0.9e-2 < u[0] <= 1.0e-2 * 1.001, u
        assert 1.2e-3 < u[3] < 1.7e-3, u
        assert u[4] == 0.0 and u[5] == 0.0, u
    np.testing.assert_allclose(jit["updates"], eager["updates"], rtol=1e-3, atol=1e-6)


_PREPARE_SCRIPT = """
import json, keras, numpy as np, torch
from lif_sbi import backends
from lif_sbi.config import ModelConfig
from lif_sbi.dataset import simulate_dataset
from lif_sbi.estimator import build_approximator
data = simulate_dataset(64, 5, progress=False)
JIT = {jit}
out = {{}}
for prepare in {prepares}:
    backends.set_seed(11)
    approx = build_approximator(ModelConfig(summary_network="conv_pool", summary_dim=4, flow_depth=1, flow_dropout=0.0))
    approx.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=JIT)
    batches = [{{k: keras.ops.convert_to_tensor(v) for k, v in approx.adapter({{k2: v2[i:i + 32] for k2, v2 in data.items()}}).items()}}
               for i in (0, 32)]
    approx.build_from_data(batches[0])
    if prepare:
        backends.prepare_training(approx)
    state = {{"optimizer_built": approx.optimizer.built, "flat": getattr(approx.optimizer, backends.module.FLAT_ADAM, None) is not None,
              "zero_grads": all(v.value.grad is not None and not v.value.grad.any() for v in approx.trainable_variables),
              "static_shapes": not torch._dynamo.config.automatic_dynamic_shapes}}
    step = backends.train_step_function(approx) if {compiled} else approx.train_step
    graphs = []
    losses = []
    for b in batches * 2:
        losses.append(float(step(b)["loss"]))
        graphs.append(int(torch._dynamo.utils.counters["stats"]["unique_graphs"]))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    out[str(prepare)] = state | {{"losses": losses, "graphs": graphs,
                                  "weights": [keras.ops.convert_to_numpy(v).ravel().tolist() for v in approx.trainable_variables]}}
print(json.dumps(out))
"""


@pytest.mark.torch
def test_prepare_training_under_torch_changes_nothing_numerically():
    """prepare_training (torch, jit_compile=True) builds the optimizer, gives every trainable
    variable a zero gradient buffer and turns off dynamo's automatic dynamic shapes; eager steps from a prepared model give bitwise the same
    losses and weights as from an unprepared one (each step zeroes gradients before backward).
    Without jit_compile it builds the optimizer and puts Adam on flat buffers, with again the same
    losses and weights bit for bit."""
    res = run_script("torch", _PREPARE_SCRIPT.format(jit=False, compiled=False, prepares=(False, True)))
    plain, prepared = res["False"], res["True"]
    assert not plain["optimizer_built"] and not plain["zero_grads"] and not plain["flat"]
    # jit_compile=False: Adam on flat buffers, no gradient buffers
    assert prepared["optimizer_built"] and prepared["flat"] and not prepared["zero_grads"]
    assert prepared["losses"] == plain["losses"] and prepared["weights"] == plain["weights"]
    # a model compiled with jit_compile=True, stepped eagerly: prepared vs not
    res_jit_state = run_script("torch", _PREPARE_SCRIPT.format(jit=True, compiled=False, prepares=(False, True)))
    assert res_jit_state["True"]["optimizer_built"] and res_jit_state["True"]["zero_grads"]
    # a partial last batch compiles a second static graph, not a dynamic one with graph breaks
    assert res_jit_state["True"]["static_shapes"] and not res_jit_state["False"]["static_shapes"]
    assert res_jit_state["True"]["losses"] == res_jit_state["False"]["losses"]
    assert res_jit_state["True"]["weights"] == res_jit_state["False"]["weights"]


@pytest.mark.torch
@pytest.mark.gpu
def test_cuda_graph_capture_that_fails_leaves_its_shape_eager():
    """A CUDA graph capture that fails (here: the step makes a tensor from a host array of 100
    numbers, which _capturable_constants refuses while capturing) warns once, runs that batch's
    step eagerly and keeps the shape eager; the captured half-step never ran, so losses, weights and
    the iteration count are the eager steps' ones. Skipped without a GPU."""
    code = """
import json, warnings, keras, numpy as np, torch
from lif_sbi import backends
from lif_sbi.config import ModelConfig
from lif_sbi.dataset import simulate_dataset
from lif_sbi.estimator import build_approximator
data = simulate_dataset(160, 5, progress=False)
out = {"device": backends.device_name()}
for record in (False, True):
    backends.set_seed(11)
    approx = build_approximator(ModelConfig(summary_network="conv_pool", summary_dim=4, flow_depth=1, flow_dropout=0.0))
    approx.compile(optimizer=keras.optimizers.Adam(1e-3))
    batches = [{k: keras.ops.convert_to_tensor(v) for k, v in approx.adapter({k2: v2[i:i + 32] for k2, v2 in data.items()}).items()} for i in range(0, 160, 32)]
    approx.build_from_data(batches[0])
    keras_step = approx.train_step
    def train_step(batch):
        if torch.cuda.is_current_stream_capturing():
            torch.as_tensor(np.arange(100.0), device="cuda")  # host data: no capture can hold it
        return keras_step(batch)
    approx.train_step = train_step
    train = backends.module._recorded_steps(approx, training=True) if record else train_step
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        losses = [float(keras.ops.convert_to_numpy((train([b]) if record else train(b))["loss"])) for b in batches]
    out[str(record)] = {"losses": losses, "described": train.describe() if record else "",
                        "warnings": [str(w.message) for w in caught if "lif_sbi" in str(w.message)],
                        "weights": [keras.ops.convert_to_numpy(v).ravel().tolist() for v in approx.trainable_variables],
                        "iterations": int(keras.ops.convert_to_numpy(approx.optimizer.iterations))}
print(json.dumps(out))
"""
    res = run_script("torch", code, timeout=600)
    eager, recorded = res["False"], res["True"]
    assert "0 batch shapes recorded; one not, its steps eager: RuntimeError: a step captured as a CUDA graph made a tensor from host data" in recorded["described"], recorded
    assert len(recorded["warnings"]) == 1 and "CUDA graph capture of the training step failed" in recorded["warnings"][0], recorded["warnings"]
    assert recorded["iterations"] == eager["iterations"] == 5
    np.testing.assert_allclose(recorded["losses"], eager["losses"], rtol=1e-5, atol=1e-6)
    for a, b in zip(recorded["weights"], eager["weights"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.torch
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_torch_adam_on_flat_buffers_updates_as_keras_adam_does(device):
    """Keras' Adam on three flat buffers (_adam_on_flat_buffers, which prepare_training applies to
    eager steps) gives Keras' own per-variable update bit for bit: weights, both moments and the
    iteration count, through steps, a learning-rate change, weights assigned from outside (the
    variables are views into the buffer, so the buffer sees the assignment) and an update of a
    subset of the variables (Keras' own update then runs). AMSGrad and SGD are left as they are,
    and so is Adam on CUDA (whose fused foreach kernels round some elements differently)."""
    code = """
import json, keras, numpy as np, torch
from lif_sbi import backends
from lif_sbi.config import ModelConfig
from lif_sbi.dataset import simulate_dataset
from lif_sbi.estimator import build_approximator
T = backends.module
data = simulate_dataset(96, 5, progress=False)
out = {"device": backends.device_name()}
def numbers(approx):
    opt = approx.optimizer
    return [keras.ops.convert_to_numpy(v).ravel().tolist() for v in (*approx.trainable_variables, *opt._momentums, *opt._velocities)] + [
        int(keras.ops.convert_to_numpy(opt.iterations))]
for flat in (False, True):
    backends.set_seed(3)
    approx = build_approximator(ModelConfig(summary_network="conv_pool", summary_dim=4, flow_depth=1, flow_dropout=0.0))
    approx.compile(optimizer=keras.optimizers.Adam(1e-3))
    batches = [{k: keras.ops.convert_to_tensor(v) for k, v in approx.adapter({k2: v2[i:i + 32] for k2, v2 in data.items()}).items()} for i in (0, 32, 64)]
    approx.build_from_data(batches[0])
    if flat:
        T._adam_on_flat_buffers(approx)
        out["kind"] = backends.training_step_kind(approx)
    losses = [float(keras.ops.convert_to_numpy(approx.train_step(b)["loss"])) for b in batches]
    approx.optimizer.learning_rate = 1e-4
    losses += [float(keras.ops.convert_to_numpy(approx.train_step(b)["loss"])) for b in batches[:2]]
    for v in approx.trainable_variables:
        v.assign(v * 0.5)
    if flat and getattr(approx.optimizer, T.FLAT_ADAM, None) is not None:
        buffer = getattr(approx.optimizer, T.FLAT_ADAM)[0]
        out["buffer_sees_assign"] = bool(torch.equal(buffer, torch.cat([v.value.detach().reshape(-1) for v in approx.trainable_variables])))
    losses.append(float(keras.ops.convert_to_numpy(approx.train_step(batches[2])["loss"])))
    subset = approx.trainable_variables[:-1]
    approx.optimizer.apply([keras.ops.ones_like(v) for v in subset], subset)
    out[str(flat)] = {"losses": losses, "numbers": numbers(approx)}
for name, opt in (("amsgrad", keras.optimizers.Adam(1e-3, amsgrad=True)), ("sgd", keras.optimizers.SGD(1e-3))):
    approx = build_approximator(ModelConfig(summary_network="conv_pool", summary_dim=4, flow_depth=1, flow_dropout=0.0))
    approx.compile(optimizer=opt)
    approx.build_from_data(batches[0])
    T._adam_on_flat_buffers(approx)
    out[name] = getattr(approx.optimizer, T.FLAT_ADAM, None) is not None
print(json.dumps(out))
"""
    res = run_script("torch", code, env={"CUDA_VISIBLE_DEVICES": ""} if device == "cpu" else None)
    assert (res["device"] == "CPU") == (device == "cpu"), res
    if device == "cuda":  # left to Keras: CUDA's foreach operations are fused kernels already
        assert "buffer_sees_assign" not in res and not res["kind"].endswith("flat buffers"), res
        return
    assert res["kind"].endswith("; Adam on flat buffers") and res["buffer_sees_assign"], res
    assert res["True"]["losses"] == res["False"]["losses"], res
    assert res["True"]["numbers"] == res["False"]["numbers"]  # bit for bit
    assert res["True"]["numbers"][-1] == 7
    assert not res["amsgrad"] and not res["sgd"], res


@pytest.mark.slow
@pytest.mark.torch
def test_compiled_torch_step_is_traced_once():
    """With prepare_training (which train_step_function calls), torch.compile traces the training
    step on its first call and never again: without it, the first step created the optimizer's
    variables inside the trace and ran with no gradients, and the second step compiled it all
    again (about 40 s more on a 2-core CPU)."""
    res = run_script("torch", _PREPARE_SCRIPT.format(jit=True, compiled=True, prepares=(True,)), timeout=900)
    prepared = res["True"]
    assert prepared["graphs"][0] > 0 and prepared["graphs"][1:] == [prepared["graphs"][0]] * 3, prepared["graphs"]


@pytest.mark.torch
def test_torch_step_records_constants_as_kernels_while_a_cuda_graph_is_captured():
    """What a CUDA graph capture of torch's training and validation steps needs, checked on the CPU
    (lif_sbi.backends.torch, _CudaGraphSteps): the steps never synchronise with the host, and the
    tensors Keras makes from Python numbers (constants such as Adam's beta_1, the optimizer's
    iteration increment, the metrics' sample weight) come from a kernel under
    `_capturable_constants` instead of from host memory, whose copy to a GPU a capture forbids.
    A dispatch-level scan of every operation the steps run counts both. The network has a GRU
    and dropout, as the reference configuration has; the steps' results are those without the
    patch, and host arrays raise."""
    code = """
import collections, contextlib, json, keras, numpy as np, torch
from torch.utils._python_dispatch import TorchDispatchMode
from lif_sbi import backends
from lif_sbi.config import ModelConfig
from lif_sbi.dataset import simulate_dataset
from lif_sbi.estimator import build_approximator

HOST = {"aten.lift_fresh.default", "aten.lift_fresh_copy.default"}  # a tensor made from host data
SYNC = {"aten._local_scalar_dense.default", "aten.is_nonzero.default", "aten.item.default", "aten.nonzero.default", "aten.equal.default"}

class Scan(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = collections.Counter()
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        self.count["host" if name in HOST else "sync" if name in SYNC else "other"] += 1
        return func(*args, **(kwargs or {}))

data = simulate_dataset(64, 5, progress=False)
backends.set_seed(3)
approx = build_approximator(ModelConfig(summary_network="conv_gru", summary_dim=4, flow_depth=1, flow_dropout=0.05))
approx.compile(optimizer=keras.optimizers.Adam(1e-3))
batch = {k: keras.ops.convert_to_tensor(v) for k, v in approx.adapter({k: v[:32] for k, v in data.items()}).items()}
approx.build_from_data(batch)
out = {}
for stage in ("train", "test"):
    def step():
        if stage == "train":
            return approx.train_step(batch)
        with torch.no_grad():
            return approx.test_step(batch)
    step(); step()  # the eager warm-up steps (optimizer and metrics built)
    counts = {}
    state = list(approx.variables) + list(approx.optimizer.variables) + list(approx.metrics_variables)
    saved = [keras.ops.convert_to_numpy(v).copy() for v in state]
    for patched in (False, True):
        for v, value in zip(state, saved):  # both steps from the same weights, moments and seeds
            v.assign(value)
        torch.manual_seed(0)
        scan = Scan()
        with scan, (backends.module._capturable_constants() if patched else contextlib.nullcontext()):
            metrics = step()
        counts[str(patched)] = dict(scan.count) | {"loss": float(metrics["loss"])}
    out[stage] = counts
original = torch.as_tensor
with backends.module._capturable_constants():
    out["shape"] = torch.as_tensor((32, 6)).tolist()
    try:
        torch.as_tensor(np.zeros(1000))
        out["host_array"] = "accepted"
    except RuntimeError as exc:
        out["host_array"] = str(exc)
out["restored"] = torch.as_tensor is original
print(json.dumps(out))
"""
    res = run_script("torch", code)
    for stage in ("train", "test"):
        plain, patched = res[stage]["False"], res[stage]["True"]
        assert plain.get("host", 0) > 0, (stage, plain)  # the scan sees Keras' constants without the patch
        assert patched.get("host", 0) == 0 and patched.get("sync", 0) == 0 and plain.get("sync", 0) == 0, (stage, plain, patched)
        assert patched["other"] > 100, patched  # the whole step ran inside the scan
        assert patched["loss"] == plain["loss"], (stage, plain, patched)
    assert res["shape"] == [32, 6] and "host data" in res["host_array"], res
    assert res["restored"], res


@pytest.mark.torch
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_recorded_steps_train_as_eager_steps_do(device):
    """torch's training and validation steps recorded once per batch shape and replayed
    (training.record_steps, _RecordedSteps: a traced aten program on the CPU, a CUDA graph on a
    GPU) give the eager steps' losses and weights: from the same weights and batches, Adam, a
    network without a GRU and one with (cuDNN inside the CUDA graph; on the CPU its steps stay
    eager, and say why), through the warm-up, the recording, replays, a batch of another shape
    (its own warm-up) and a learning rate changed between steps as ReduceLROnPlateau changes it.
    SGD, which hands PyTorch its learning rate as a Python number (a host read), is not recorded:
    the watched warm-up step sees the read, and its steps stay eager, with the eager results. On
    the CPU a trace that stops half-way (SGD traced without that watch) has run part of the step,
    which is undone before the step runs eagerly. Then `fit` with `prepare_training` records one training
    and one validation shape and trains to finite losses. No dropout: a replay draws its masks
    from PyTorch's generator, not Keras'."""
    code = """
import json, keras, numpy as np, torch
import bayesflow as bf
from lif_sbi import backends
from lif_sbi.config import ModelConfig
from lif_sbi.dataset import simulate_dataset
from lif_sbi.estimator import build_approximator
data = simulate_dataset(160, 5, progress=False)
out = {"device": backends.device_name()}
sizes = [32, 32, 32, 32, 20, 32, 32]  # warm-up x2, recording, replay, another shape, replays
for case in ("conv_pool", "conv_gru", "conv_pool sgd"):
    kind = case.split()[0]
    runs = {}
    for record in (False, True):
        backends.set_seed(11)
        approx = build_approximator(ModelConfig(summary_network=kind, summary_dim=4, flow_depth=1, flow_dropout=0.0))
        approx.compile(optimizer=keras.optimizers.SGD(1e-2) if "sgd" in case else keras.optimizers.Adam(1e-3))
        batches, start = [], 0
        for n in sizes:
            batches.append({k: keras.ops.convert_to_tensor(v) for k, v in approx.adapter({k2: v2[start:start + n] for k2, v2 in data.items()}).items()})
            start += n
        approx.build_from_data(batches[0])
        before = [keras.ops.convert_to_numpy(v).ravel().copy() for v in approx.trainable_variables]
        train = backends.module._recorded_steps(approx, training=True) if record else None
        val = backends.module._recorded_steps(approx, training=False) if record else None
        losses = []
        for i, b in enumerate(batches):
            if i == 5:
                approx.optimizer.learning_rate = 1e-4
            losses.append(float(keras.ops.convert_to_numpy((train([b]) if record else approx.train_step(b))["loss"])))
        with torch.no_grad():
            val_losses = [float(keras.ops.convert_to_numpy((val([batches[0]]) if record else approx.test_step(batches[0]))["loss"])) for _ in range(4)]
        runs[str(record)] = {"losses": losses, "val": val_losses, "described": train.describe() if record else "",
                             "updates": [(keras.ops.convert_to_numpy(v).ravel() - w).tolist() for v, w in zip(approx.trainable_variables, before)],
                             "iterations": int(keras.ops.convert_to_numpy(approx.optimizer.iterations))}
    out[case] = runs
if out["device"] == "CPU":  # _TracedSteps._record straight away on SGD: the trace stops, the step runs eagerly
    weights = {}
    for how in ("eager", "stopped trace"):
        backends.set_seed(11)
        approx = build_approximator(ModelConfig(summary_network="conv_pool", summary_dim=4, flow_depth=1, flow_dropout=0.0))
        approx.compile(optimizer=keras.optimizers.SGD(1e-2))
        bs = [{k: keras.ops.convert_to_tensor(v) for k, v in approx.adapter({k2: v2[i:i + 32] for k2, v2 in data.items()}).items()} for i in (0, 32, 64)]
        approx.build_from_data(bs[0])
        approx.train_step(bs[0]); approx.train_step(bs[1])
        if how == "eager":
            approx.train_step(bs[2])
        else:
            _, record, why = backends.module._TracedSteps(approx, training=True)._record(bs[2])
            out["stopped"] = [record is None, why]
        weights[how] = [keras.ops.convert_to_numpy(v).ravel().tolist() for v in approx.trainable_variables] + [int(keras.ops.convert_to_numpy(approx.optimizer.iterations))]
    out["stopped"].append(weights["eager"] == weights["stopped trace"])
backends.set_seed(5)
approx = build_approximator(ModelConfig(summary_network="conv_pool", summary_dim=4, flow_depth=1))
approx.compile(optimizer=keras.optimizers.Adam(1e-3))
keys = ("parameters", "observables")
train = bf.datasets.OfflineDataset({k: data[k][:128] for k in keys}, batch_size=32, adapter=approx.adapter)
val = bf.datasets.OfflineDataset({k: data[k][128:] for k in keys}, batch_size=32, adapter=approx.adapter, shuffle=False)
approx.build_from_data(train[0])
backends.prepare_training(approx)
history = approx.fit(dataset=train, validation_data=val, epochs=3, verbose=0).history
out["fit"] = {"loss": history["loss"], "val_loss": history["val_loss"], "train": backends.training_step_kind(approx),
              "test": approx.test_function.describe()}
print(json.dumps(out))
"""
    res = run_script("torch", code, timeout=600, env={"CUDA_VISIBLE_DEVICES": ""} if device == "cpu" else None)
    assert (res["device"] == "CPU") == (device == "cpu"), res
    kind_of_record = "traced aten programs" if device == "cpu" else "CUDA graphs"
    for kind in ("conv_pool", "conv_gru", "conv_pool sgd"):
        eager, recorded = res[kind]["False"], res[kind]["True"]
        assert kind_of_record in recorded["described"], recorded["described"]
        if kind == "conv_gru" and device == "cpu":
            assert "0 batch shapes recorded; one not, its steps eager: a GRU on the CPU" in recorded["described"], recorded["described"]
        elif kind == "conv_pool sgd":
            assert "0 batch shapes recorded; one not, its steps eager: the step reads tensor values into Python (aten._local_scalar_dense" in recorded["described"], recorded["described"]
        else:
            assert "1 batch shape recorded" in recorded["described"] and "not" not in recorded["described"], recorded["described"]
        assert recorded["iterations"] == eager["iterations"] == 7, kind
        np.testing.assert_allclose(recorded["losses"], eager["losses"], rtol=1e-4, atol=1e-5, err_msg=kind)
        np.testing.assert_allclose(recorded["val"], eager["val"], rtol=1e-4, atol=1e-5, err_msg=kind)
        for a, b in zip(recorded["updates"], eager["updates"]):
            # Adam moves every weight by about the rate per step: a step missed, or taken at the
            # old rate after the change, differs by ~1e-4 or more; float32 rounding by far less
            np.testing.assert_allclose(a, b, atol=2e-5, err_msg=kind)
    if device == "cpu":
        stopped, why, same = res["stopped"]
        assert stopped and why.startswith("the step cannot be traced") and same, res["stopped"]  # the same weights as eager, bit for bit
    fit = res["fit"]
    assert np.all(np.isfinite(fit["loss"] + fit["val_loss"])), fit
    assert "1 batch shape recorded" in fit["train"] and "1 batch shape recorded" in fit["test"], fit


@pytest.mark.torch
@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="inductor needs a C++ compiler (g++ or $CXX)")
def test_compiled_steps_train_as_replayed_steps_do():
    """On the CPU, training.compile_steps: a training shape replayed COMPILE_AFTER times is then
    run as its traced program compiled by inductor, and trains as the replay does: the same losses
    and weight updates within float32 round-off, with dropout (its masks still from PyTorch's
    generator) and a learning rate changed after the compilation, the same iteration count. A
    compilation that fails (here: no C++ compiler where inductor looks for one) warns once, puts
    back what it touched and replays: the replayed run's numbers bit for bit. `fit` after
    `prepare_training` compiles its shape (and says so) with compile_steps, not without."""
    code = """
import json, warnings, keras, numpy as np, torch
from lif_sbi import backends
from lif_sbi.config import ModelConfig
from lif_sbi.dataset import simulate_dataset
from lif_sbi.estimator import build_approximator
data = simulate_dataset(256, 5, progress=False)
backends.module._TracedSteps.COMPILE_AFTER = 2  # eager x2, recording, replays x2, then compiled (call 6)
def run(compile_steps):
    backends.set_seed(11)
    approx = build_approximator(ModelConfig(summary_network="conv_pool", summary_dim=4, flow_depth=1, flow_dropout=0.05))
    approx.compile(optimizer=keras.optimizers.Adam(1e-3))
    batches = [{k: keras.ops.convert_to_tensor(v) for k, v in approx.adapter({k2: v2[i:i + 32] for k2, v2 in data.items()}).items()}
               for i in range(0, 256, 32)]
    approx.build_from_data(batches[0])
    backends.prepare_training(approx)  # Adam on flat buffers, as fit runs it
    before = [keras.ops.convert_to_numpy(v).ravel().copy() for v in approx.trainable_variables]
    steps = backends.module._recorded_steps(approx, training=True, compile_steps=compile_steps)
    losses = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(10):
            if i == 8:
                approx.optimizer.learning_rate = 1e-4
            losses.append(float(keras.ops.convert_to_numpy(steps([batches[i % len(batches)]])["loss"])))
    return {"losses": losses, "described": steps.describe(), "warnings": [str(w.message) for w in caught if "inductor" in str(w.message)],
            "updates": [(keras.ops.convert_to_numpy(v).ravel() - w).tolist() for v, w in zip(approx.trainable_variables, before)],
            "iterations": int(keras.ops.convert_to_numpy(approx.optimizer.iterations))}
out = {}
with torch._inductor.config.patch({"cpp.cxx": (None, "/nonexistent/c++")}):
    out["failed"] = run(True)
out["replayed"] = run(False)
out["compiled"] = run(True)
import bayesflow as bf
for compile_steps in (True, False):  # fit, as the training command runs it (prepare_training)
    backends.set_seed(5)
    approx = build_approximator(ModelConfig(summary_network="conv_pool", summary_dim=4, flow_depth=1))
    approx.compile(optimizer=keras.optimizers.Adam(1e-3))
    train = bf.datasets.OfflineDataset({k: data[k][:128] for k in ("parameters", "observables")}, batch_size=32, adapter=approx.adapter)
    approx.build_from_data(train[0])
    backends.prepare_training(approx, compile_steps=compile_steps)
    history = approx.fit(dataset=train, epochs=3, verbose=0).history  # 12 steps of one shape
    out[f"fit {compile_steps}"] = {"loss": history["loss"], "train": backends.training_step_kind(approx)}
print(json.dumps(out))
"""
    res = run_script("torch", code, timeout=600, env={"CUDA_VISIBLE_DEVICES": ""})
    replayed, compiled, failed = res["replayed"], res["compiled"], res["failed"]
    fit_compiled, fit_replayed = res["fit True"], res["fit False"]
    assert "1 batch shape recorded); one compiled by inductor after 2 replays" in fit_compiled["train"], fit_compiled
    assert "compiled" not in fit_replayed["train"] and "1 batch shape recorded" in fit_replayed["train"], fit_replayed
    np.testing.assert_allclose(fit_compiled["loss"], fit_replayed["loss"], rtol=1e-4, atol=1e-5)
    assert "compiled" not in replayed["described"] and not replayed["warnings"], replayed["described"]
    assert "one compiled by inductor after 2 replays" in compiled["described"] and not compiled["warnings"], compiled
    assert replayed["iterations"] == compiled["iterations"] == failed["iterations"] == 10
    assert compiled["losses"][:5] == replayed["losses"][:5]  # the steps before the compilation: the same operations
    np.testing.assert_allclose(compiled["losses"], replayed["losses"], rtol=1e-4, atol=1e-5)
    for a, b in zip(compiled["updates"], replayed["updates"]):
        # Adam moves every weight by about the rate per step: a step missed, a dropout mask drawn
        # from another stream, or the old rate after the change differ by ~1e-4 or more
        np.testing.assert_allclose(a, b, atol=2e-5)
    assert "compiling one failed, replayed instead" in failed["described"], failed["described"]
    assert len(failed["warnings"]) == 1 and "replayed uncompiled" in failed["warnings"][0], failed["warnings"]
    assert failed["losses"] == replayed["losses"] and failed["updates"] == replayed["updates"]  # bit for bit
