"""lif_sbi.backends, the interface across backends: FastGRU equals keras.layers.GRU(reset_after=True),
gru_many equals one GRU after another, Conv1D equals keras.layers.Conv1D, and the training step.

Keras reads KERAS_BACKEND once per process, so each backend runs in a subprocess
(``backend_scripts.run_script``).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from backend_scripts import BACKENDS, GRAD_HELPERS, ROOT, run_script


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


# The script of test_gru_many_is_one_gru_after_another, in parts: the GRUs' inputs and weights,
# their outputs and gradients one after the other and through gru_many, the cases compared, then
# what only torch (threads) and JAX (one scan) do.
_GRU_MANY_CALLS = """
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
    # scope is kept in a name: an unreferenced one is finalised at once, which leaves it again.
    on_cpu = keras.device("cpu:0")
    on_cpu.__enter__()
"""

_GRU_MANY_RUN = """
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
"""

_GRU_MANY_CASES = """
out = {"cases": []}
for return_sequences in (True, False):
    (y1, g1), (y2, g2) = run(False, return_sequences), run(True, return_sequences)
    out["cases"].append({
        "shapes": [list(y.shape) for y in y2],
        "out_err": max(float(np.abs(a - b).max()) for a, b in zip(y1, y2)),
        "grad_err": max(float(np.abs(a - b).max() / (np.abs(a).max() + 1e-12)) for a, b in zip(g1, g2)),
        "n_grads": len(g2),
    })
"""

_GRU_MANY_TORCH_THREADS = """
if backends.name == "torch":
    from lif_sbi.backends.torch import gru_ops
    out["threaded"] = bool(gru_ops._POOLS)
    out["threads_after"] = torch.get_num_threads()
    gru_ops._POOLS.clear()
    with torch.no_grad():  # inference: side by side as well, no autograd graph
        ys = backends.gru_many([[torch.tensor(a) for a in c] for c in calls], return_sequences=False)
    ref = [backends.gru(*[torch.tensor(a) for a in c], return_sequences=False) for c in calls]
    out["no_grad_err"] = max(float((a - b).abs().max()) for a, b in zip(ys, ref))
    out["no_grad_threaded"] = bool(gru_ops._POOLS)
    # only some inputs need gradients (frozen weights, constant inputs)
    tensors = [[torch.tensor(a, requires_grad=(j == 1)) for j, a in enumerate(c)] for c in calls]
    with torch.enable_grad():
        ys = backends.gru_many(tensors, return_sequences=False)
        sum(y.sum() for y in ys).backward()
    out["partial_grads"] = [[t.grad is not None for t in c] for c in tensors]
    torch.set_num_threads(1)  # one thread: one GRU after the other, same values
    gru_ops._POOLS.clear()
    with torch.enable_grad():
        ys = backends.gru_many([[torch.tensor(a) for a in c] for c in calls], return_sequences=True)
    ref = [backends.gru(*[torch.tensor(a) for a in c], return_sequences=True) for c in calls]
    out["one_thread_err"] = max(float((a - b).abs().max()) for a, b in zip(ys, ref))
    out["one_thread_threaded"] = bool(gru_ops._POOLS)
"""

_GRU_MANY_JAX_SCAN = """
if backends.name == "jax":  # the two GRUs of one shape share one scan: two XLA while loops, not three
    import jax, jax.numpy as jnp
    many = jax.jit(lambda flat: backends.gru_many([flat[4 * i: 4 * i + 4] for i in range(3)], return_sequences=False))
    out["loops"] = many.lower([jnp.asarray(a) for c in calls for a in c]).compile().as_text().count(" while(")
print(json.dumps(out))
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_gru_many_is_one_gru_after_another(backend):
    """backends.gru_many gives what one backends.gru after another gives: outputs and gradients
    (inputs and weights), with and without return_sequences; under torch it runs the GRUs side by
    side on threads (checked), for training and for inference, and leaves the thread count as it was;
    under JAX the GRUs of one shape share one scan (checked)."""
    code = GRAD_HELPERS + _GRU_MANY_CALLS + _GRU_MANY_RUN + _GRU_MANY_CASES + _GRU_MANY_TORCH_THREADS + _GRU_MANY_JAX_SCAN
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
