"""The torch backend's training steps (lif_sbi.backends.torch.steps): prepare_training, eager steps
recorded and replayed (CUDA graphs, traced aten programs, compiled by inductor) against eager steps,
and what a CUDA graph capture needs (lif_sbi.backends.torch.dispatch)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from backend_scripts import run_script


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
from lif_sbi.backends.torch import steps as torch_steps
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
    train = torch_steps._recorded_steps(approx, training=True) if record else train_step
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


@pytest.mark.slow
@pytest.mark.torch
def test_compiled_torch_step_is_traced_once():
    """With prepare_training (which train_step_function calls), torch.compile traces the training
    step on its first call and never again: without it, the first step would create the
    optimizer's variables inside the trace and run with no gradients, and the second step would
    compile it all again (about 40 s more on a 2-core CPU)."""
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
from lif_sbi.backends.torch import dispatch
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
        with scan, (dispatch._capturable_constants() if patched else contextlib.nullcontext()):
            metrics = step()
        counts[str(patched)] = dict(scan.count) | {"loss": float(metrics["loss"])}
    out[stage] = counts
original = torch.as_tensor
with dispatch._capturable_constants():
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


# The script of test_recorded_steps_train_as_eager_steps_do, in parts: the set-up, each case's
# eager and recorded steps, the trace that stops half-way (CPU), and `fit` with prepare_training.
_RECORDED_SETUP = """
import json, keras, numpy as np, torch
import bayesflow as bf
from lif_sbi import backends
from lif_sbi.backends.torch import steps as torch_steps
from lif_sbi.config import ModelConfig
from lif_sbi.dataset import simulate_dataset
from lif_sbi.estimator import build_approximator
data = simulate_dataset(160, 5, progress=False)
out = {"device": backends.device_name()}
"""

_RECORDED_VS_EAGER = """
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
        train = torch_steps._recorded_steps(approx, training=True) if record else None
        val = torch_steps._recorded_steps(approx, training=False) if record else None
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
"""

_RECORDED_STOPPED_TRACE = """
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
            _, record, why = torch_steps._TracedSteps(approx, training=True)._record(bs[2])
            out["stopped"] = [record is None, why]
        weights[how] = [keras.ops.convert_to_numpy(v).ravel().tolist() for v in approx.trainable_variables] + [int(keras.ops.convert_to_numpy(approx.optimizer.iterations))]
    out["stopped"].append(weights["eager"] == weights["stopped trace"])
"""

_RECORDED_FIT = """
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


def _assert_recorded_steps_as_eager(res, device):
    """Each case's recorded steps against its eager steps: how they were recorded (or why not), the
    iteration count, the training and validation losses and the weight updates."""
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
    code = _RECORDED_SETUP + _RECORDED_VS_EAGER + _RECORDED_STOPPED_TRACE + _RECORDED_FIT
    res = run_script("torch", code, timeout=600, env={"CUDA_VISIBLE_DEVICES": ""} if device == "cpu" else None)
    assert (res["device"] == "CPU") == (device == "cpu"), res
    _assert_recorded_steps_as_eager(res, device)
    if device == "cpu":
        stopped, why, same = res["stopped"]
        assert stopped and why.startswith("the step cannot be traced") and same, res["stopped"]  # the same weights as eager, bit for bit
    fit = res["fit"]
    assert np.all(np.isfinite(fit["loss"] + fit["val_loss"])), fit
    assert "1 batch shape recorded" in fit["train"] and "1 batch shape recorded" in fit["test"], fit


@pytest.mark.slow  # 65 s of inductor compiling
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
from lif_sbi.backends.torch import steps as torch_steps
from lif_sbi.config import ModelConfig
from lif_sbi.dataset import simulate_dataset
from lif_sbi.estimator import build_approximator
data = simulate_dataset(256, 5, progress=False)
torch_steps._TracedSteps.COMPILE_AFTER = 2  # eager x2, recording, replays x2, then compiled (call 6)
def run(compile_steps):
    backends.set_seed(11)
    approx = build_approximator(ModelConfig(summary_network="conv_pool", summary_dim=4, flow_depth=1, flow_dropout=0.05))
    approx.compile(optimizer=keras.optimizers.Adam(1e-3))
    batches = [{k: keras.ops.convert_to_tensor(v) for k, v in approx.adapter({k2: v2[i:i + 32] for k2, v2 in data.items()}).items()}
               for i in range(0, 256, 32)]
    approx.build_from_data(batches[0])
    backends.prepare_training(approx)  # Adam on flat buffers, as fit runs it
    before = [keras.ops.convert_to_numpy(v).ravel().copy() for v in approx.trainable_variables]
    steps = torch_steps._recorded_steps(approx, training=True, compile_steps=compile_steps)
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


@pytest.mark.torch
def test_a_resumed_runs_steps_are_recorded_and_compiled_where_the_uninterrupted_runs_were():
    """`training_state`'s counters in a checkpoint: steps cut after k calls and continued by a new
    recorder restored from the state run eager, recorded, replayed and compiled at the same calls
    as one recorder's 10 (inductor replaced by a wrapper that counts its calls, so the numbers
    are the replay's and the test takes a second), and give the same losses bit for bit: cut
    before the recording, between it and the compilation, and after the compilation. Without
    the state the continued recorder compiles later."""
    code = """
import json, keras, torch
from lif_sbi import backends
from lif_sbi.backends.torch import steps as torch_steps
from lif_sbi.config import ModelConfig
from lif_sbi.dataset import simulate_dataset
from lif_sbi.estimator import build_approximator
data = simulate_dataset(64, 5, progress=False)
torch_steps._TracedSteps.COMPILE_AFTER = 2  # eager x2, recording, replays x2, then compiled from call 6
compiled_calls = []
def fake_compile(program, **kwargs):
    def run(*args):
        compiled_calls.append(current["call"])
        return program(*args)
    return run
torch.compile = fake_compile
current = {}
def model():
    backends.set_seed(3)
    approx = build_approximator(ModelConfig(summary_network="conv_pool", summary_dim=4, flow_depth=1, flow_dropout=0.0))
    approx.compile(optimizer=keras.optimizers.Adam(1e-3))
    batch = {k: keras.ops.convert_to_tensor(v) for k, v in approx.adapter({k2: v2[:32] for k2, v2 in data.items()}).items()}
    approx.build_from_data(batch)
    backends.prepare_training(approx)
    return approx, batch
def run(cut, restore=True):
    compiled_calls.clear()
    approx, batch = model()
    steps = torch_steps._recorded_steps(approx, training=True, compile_steps=True)
    losses = []
    for call in range(10):
        if call == cut:
            state = steps.state()
            steps = torch_steps._recorded_steps(approx, training=True, compile_steps=True)
            if restore:
                steps.restore(json.loads(json.dumps(state)))
        current["call"] = call
        losses.append(float(keras.ops.convert_to_numpy(steps([batch])["loss"])))
    return {"losses": losses, "compiled": list(compiled_calls)}
out = {str(cut): run(cut) for cut in (None, 1, 4, 7)}
out["unrestored"] = run(4, restore=False)
print(json.dumps(out))
"""
    res = run_script("torch", code, timeout=300, env={"CUDA_VISIBLE_DEVICES": ""})
    whole = res["None"]
    assert whole["compiled"] == [5, 6, 7, 8, 9], whole
    for cut in ("1", "4", "7"):
        assert res[cut]["compiled"] == whole["compiled"], (cut, res[cut])
        assert res[cut]["losses"] == whole["losses"], cut
    assert res["unrestored"]["compiled"] == [9], res["unrestored"]  # its own warm-up, recording and replays first
