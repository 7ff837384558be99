"""TensorFlow backend: cuDNN GRU through Keras on a GPU, a ``tf.scan`` loop on the CPU.

On the CPU the input projection of all time steps is computed in one matmul before the loop
(Keras' generic RNN loop does it step by step), so each step of the loop is one (batch, u) x
(u, 3u) matmul plus the gate arithmetic.
"""

from __future__ import annotations

import random

import keras
import numpy as np
import tensorflow as tf
from bayesflow.approximators.helpers.samplers import Sampler

from ._common import RecordedSampler, gru_many_in_turn, training_step_kind

name = "tensorflow"


def _as_tensor(x, dtype=None):
    if isinstance(x, keras.Variable):
        x = x.value
    return tf.convert_to_tensor(x, dtype=dtype)


def _has_gpu() -> bool:
    return bool(tf.config.list_logical_devices("GPU"))


def gru(inputs, kernel, recurrent_kernel, bias, *, return_sequences: bool, initial_state=None):
    """GRU forward (Keras reset_after=True layout); see lif_sbi.backends for the contract."""
    kernel = _as_tensor(kernel)
    recurrent_kernel = _as_tensor(recurrent_kernel)
    bias = _as_tensor(bias)
    x = _as_tensor(inputs, dtype=kernel.dtype)
    units = recurrent_kernel.shape[0]
    if initial_state is None:
        h0 = tf.zeros(tf.stack([tf.shape(x)[0], units]), dtype=x.dtype)
    else:
        h0 = _as_tensor(initial_state, dtype=x.dtype)

    if _has_gpu():
        from keras.src.backend.tensorflow import rnn as tf_rnn

        try:
            last, outputs, _ = tf_rnn.gru(
                x,
                h0,
                None,
                kernel,
                recurrent_kernel,
                bias,
                keras.activations.tanh,
                keras.activations.sigmoid,
                return_sequences=return_sequences,
                reset_after=True,
            )
            return outputs if return_sequences else last
        except NotImplementedError:
            pass

    scan = _scan_gru_graph if tf.executing_eagerly() else _scan_gru_inline  # inside a graph: inlined
    return scan(x, h0, kernel, recurrent_kernel, bias, return_sequences)


def _scan_gru_inline(x, h0, kernel, recurrent_kernel, bias, return_sequences: bool):
    # (time, batch, 3u): input projection of all steps at once
    x_proj = tf.einsum("btf,fg->tbg", x, kernel) + bias[0]
    b_rec = bias[1]

    def step(h, xp):
        hp = tf.matmul(h, recurrent_kernel) + b_rec
        x_z, x_r, x_h = tf.split(xp, 3, axis=-1)
        h_z, h_r, h_h = tf.split(hp, 3, axis=-1)
        z = tf.sigmoid(x_z + h_z)
        r = tf.sigmoid(x_r + h_r)
        hh = tf.tanh(x_h + r * h_h)
        return z * h + (1.0 - z) * hh

    if return_sequences:
        states = tf.scan(step, x_proj, initializer=h0)  # (time, batch, u)
        return tf.transpose(states, (1, 0, 2))
    return tf.foldl(step, x_proj, initializer=h0)


# A graph function, so that an eager call (sampling, inference: Keras runs those eagerly under
# TensorFlow) runs the scan as one graph instead of one Python step per time step: 1.1 s vs
# 0.2 s for one recording's posterior with the reference network on the CPU
# (bench/bench_training.py -k test_posterior_one_trace). Inside a graph (the tf.function or XLA
# training step) the scan is inlined: XLA needs the static shapes that the relaxed
# shapes of reduce_retracing would take away.
_scan_gru_graph = tf.function(_scan_gru_inline, reduce_retracing=True)


gru_many = gru_many_in_turn(gru)


def conv1d(inputs, kernel, *, strides: int, padding: str):
    """1-D convolution, Keras' layout ((batch, time, in) * (k, in, out) -> (batch, time', out),
    no bias): Keras' own op, already the backend's fast path."""
    return keras.ops.conv(inputs, kernel, strides=strides, padding=padding, data_format="channels_last")


def compile_inference(approximator) -> None:
    """Run a BayesFlow approximator's flow sampling as one ``tf.function`` graph per batch shape
    (``_GraphSampler``), once a shape has been sampled a few times (on the CPU, batches of up to
    4,096 draws): the same draws to float32 rounding, without eager TensorFlow's per-operation
    cost (bench/RESULTS.md, "Recorded sampling under torch and TensorFlow").
    Replaces the approximator's ``sampler`` (not saved with the model) unless it is of a type
    other than BayesFlow's default. The summary network stays eager."""
    if type(getattr(approximator, "sampler", None)) is Sampler:
        approximator.sampler = _GraphSampler()


class _GraphSampler(RecordedSampler):
    """BayesFlow's Sampler with the flow's inverse pass recorded per batch shape (see
    ``_common.RecordedSampler``) as a ``tf.function``'s concrete function for that shape; the
    flow's weights are read from their variables at every call."""

    def _record(self, inverse, z, conditions):
        program = tf.function(inverse).get_concrete_function(tf.TensorSpec(z.shape, z.dtype), tf.TensorSpec(conditions.shape, conditions.dtype))
        return program, program(z, conditions)

    def _run(self, program, z, conditions):
        return program(z, conditions)


def set_seed(seed: int) -> None:
    """Seed Python, NumPy, TensorFlow and Keras."""
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed)
    tf.random.set_seed(seed)
    keras.utils.set_random_seed(seed)


def device_name() -> str:
    """The GPU TensorFlow places ops on (its name if known), or "CPU"."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU"
    details = tf.config.experimental.get_device_details(gpus[0])
    return details.get("device_name", gpus[0].name)


def prepare_training(model, *, record_steps: bool = True, compile_steps: bool = True, state: dict | None = None) -> None:
    """Nothing to prepare: tf.function traces the step once whatever the optimizer's and gradients' state."""


def training_state(model) -> dict:
    """Nothing: a tf.function step is the same step at every call, resumed or not."""
    return {}


def train_step_function(model, *, record_steps: bool = True, compile_steps: bool = True):
    """One optimizer step in a ``tf.function``, as ``model.fit`` compiles it (XLA where the model
    was compiled with ``jit_compile=True``; Keras' "auto" means XLA only with a GPU)."""
    return tf.function(model.train_step, reduce_retracing=True, jit_compile=bool(model.jit_compile))
