"""The JAX backend: eager GRUs compile once per shape, compiled inference draws what eager sampling
draws, and compiled programs are kept on disk for the next process."""

from __future__ import annotations

import importlib.util

import pytest

from backend_scripts import run_script


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
