"""Recorded sampling under torch and TensorFlow (backends.compile_inference, _common.RecordedSampler,
torch's sampler module): the recorded flow programs draw what eager sampling draws."""

from __future__ import annotations

import importlib.util

import pytest

from backend_scripts import run_script


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
