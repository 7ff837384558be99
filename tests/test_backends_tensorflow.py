"""The TensorFlow backend: an eager GRU call runs one traced graph function."""

from __future__ import annotations

import importlib.util

import pytest

from backend_scripts import run_script


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
