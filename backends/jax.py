"""JAX backend: the GRU is a ``jax.lax.scan`` over time (XLA-compiled), input projection hoisted.

JAX is not installed by setup.sh (about 620 MB); with ``pip install jax`` (checked with 0.10.2 on
the CPU) the jax-marked tests run and ``KERAS_BACKEND=jax python -m lif_sbi.train`` works.
"""

from __future__ import annotations

import functools
import random

import jax
import jax.numpy as jnp
import keras
import numpy as np

from ._common import gru_many_in_turn, seed_keras

name = "jax"


def _as_array(x, dtype=None):
    if isinstance(x, keras.Variable):
        x = x.value
    return jnp.asarray(x, dtype=dtype)


def gru(inputs, kernel, recurrent_kernel, bias, *, return_sequences: bool, initial_state=None):
    """GRU forward (Keras reset_after=True layout); see lif_sbi.backends for the contract."""
    kernel = _as_array(kernel)
    recurrent_kernel = _as_array(recurrent_kernel)
    bias = _as_array(bias)
    x = _as_array(inputs, dtype=kernel.dtype)
    units = recurrent_kernel.shape[0]
    h0 = (
        jnp.zeros((x.shape[0], units), dtype=x.dtype)
        if initial_state is None
        else _as_array(initial_state, dtype=x.dtype)
    )
    return _scan_gru(x, h0, kernel, recurrent_kernel, bias, return_sequences=return_sequences)


# Jitted at module level so that an eager call (sampling, inference: Keras does not jit those
# under JAX) compiles once per input shape. A scan over a step function created anew in each call
# was traced and compiled again at every call: one recording's posterior with the reference
# network took 458 ms on the CPU, now 64 ms (bench/bench_training.py -k test_posterior_one_trace).
# Inside a jitted training step this is inlined as before.
@functools.partial(jax.jit, static_argnames=("return_sequences",))
def _scan_gru(x, h0, kernel, recurrent_kernel, bias, *, return_sequences: bool):
    x_proj = jnp.einsum("btf,fg->tbg", x, kernel) + bias[0]  # (time, batch, 3u)

    def step(h, xp):
        hp = h @ recurrent_kernel + bias[1]
        x_z, x_r, x_h = jnp.split(xp, 3, axis=-1)
        h_z, h_r, h_h = jnp.split(hp, 3, axis=-1)
        z = jax.nn.sigmoid(x_z + h_z)
        r = jax.nn.sigmoid(x_r + h_r)
        hh = jnp.tanh(x_h + r * h_h)
        h = z * h + (1.0 - z) * hh
        return h, h

    last, states = jax.lax.scan(step, h0, x_proj)
    return jnp.transpose(states, (1, 0, 2)) if return_sequences else last


gru_many = gru_many_in_turn(gru)


def conv1d(inputs, kernel, *, strides: int, padding: str):
    """1-D convolution, Keras' layout ((batch, time, in) * (k, in, out) -> (batch, time', out),
    no bias): Keras' own op, already the backend's fast path."""
    return keras.ops.conv(inputs, kernel, strides=strides, padding=padding, data_format="channels_last")


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and Keras (JAX itself is functional: Keras' seed generators carry keys)."""
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed)
    seed_keras(seed)


def device_name() -> str:
    """The first device JAX computes on ("CPU" or the accelerator's kind)."""
    dev = jax.devices()[0]
    return "CPU" if dev.platform == "cpu" else getattr(dev, "device_kind", str(dev))


def prepare_training(model) -> None:
    """Nothing to prepare: jax.jit traces the step once whatever the optimizer's and gradients' state."""


def train_step_function(model):
    """One stateless optimizer step, jitted as ``model.fit`` jits it (unless the model was compiled
    with ``jit_compile=False``); the new state is written back to the Keras variables."""
    if not model.optimizer.built:  # `fit` builds it before its first step; a hand-written loop must too
        model.optimizer.build(model.trainable_variables)
    groups = (
        model.trainable_variables,
        model.non_trainable_variables,
        model.optimizer.variables,
        model.metrics_variables,
    )
    stateless_step = jax.jit(model.stateless_train_step) if model.jit_compile else model.stateless_train_step

    def step(batch):
        state = tuple([v.value for v in group] for group in groups)
        metrics, state = stateless_step(state, batch)
        for group, values in zip(groups, state):
            for variable, value in zip(group, values):
                variable.assign(value)
        return metrics

    return step
