"""Helpers for the backend tests: run a script under a Keras backend in a subprocess, the backends
as pytest parameters, and a gradient helper for the scripts.

Keras reads KERAS_BACKEND once per process, so each backend runs in a subprocess.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

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
