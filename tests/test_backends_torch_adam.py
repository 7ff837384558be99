"""The torch backend's Keras Adam on flat buffers (lif_sbi.backends.torch.adam) updates as Keras' Adam does."""

from __future__ import annotations

import pytest

from backend_scripts import run_script


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
from lif_sbi.backends.torch import adam
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
        adam._adam_on_flat_buffers(approx)
        out["kind"] = backends.training_step_kind(approx)
    losses = [float(keras.ops.convert_to_numpy(approx.train_step(b)["loss"])) for b in batches]
    approx.optimizer.learning_rate = 1e-4
    losses += [float(keras.ops.convert_to_numpy(approx.train_step(b)["loss"])) for b in batches[:2]]
    for v in approx.trainable_variables:
        v.assign(v * 0.5)
    if flat and getattr(approx.optimizer, adam.FLAT_ADAM, None) is not None:
        buffer = getattr(approx.optimizer, adam.FLAT_ADAM)[0]
        out["buffer_sees_assign"] = bool(torch.equal(buffer, torch.cat([v.value.detach().reshape(-1) for v in approx.trainable_variables])))
    losses.append(float(keras.ops.convert_to_numpy(approx.train_step(batches[2])["loss"])))
    subset = approx.trainable_variables[:-1]
    approx.optimizer.apply([keras.ops.ones_like(v) for v in subset], subset)
    out[str(flat)] = {"losses": losses, "numbers": numbers(approx)}
for name, opt in (("amsgrad", keras.optimizers.Adam(1e-3, amsgrad=True)), ("sgd", keras.optimizers.SGD(1e-3))):
    approx = build_approximator(ModelConfig(summary_network="conv_pool", summary_dim=4, flow_depth=1, flow_dropout=0.0))
    approx.compile(optimizer=opt)
    approx.build_from_data(batches[0])
    adam._adam_on_flat_buffers(approx)
    out[name] = getattr(approx.optimizer, adam.FLAT_ADAM, None) is not None
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
