"""JAX backend: the GRU is a ``jax.lax.scan`` over time (XLA-compiled), input projection hoisted.

JAX is not installed by setup.sh (about 620 MB); with ``pip install jax`` (checked with 0.10.2 on
the CPU) the jax-marked tests run and ``KERAS_BACKEND=jax python -m lif_sbi.train`` works.
"""

from __future__ import annotations

import functools
import os
import random

import jax
import jax.numpy as jnp
import keras
import numpy as np
from bayesflow.approximators.helpers.conditions import ConditionBuilder
from bayesflow.approximators.helpers.samplers import Sampler
from bayesflow.utils import concatenate_valid

from ._common import seed_keras, training_step_kind

name = "jax"


def _use_persistent_compilation_cache() -> str | None:
    """Keep XLA's compiled programs on disk, so that a new process does not compile them again.

    BayesFlow samples eagerly, and eager JAX compiles every operation once per input shape in each
    process: one recording's posterior from a `ci` model takes 3.7 s in a fresh process, of which
    about 3.6 s compiling, and 0.03 s once compiled; with this cache a second process takes 0.76 s,
    and loading the model 2.3 instead of 5.0 s (2-core CPU, ad hoc). Training's compiled step is
    kept as well. The cache is `LIF_SBI_JAX_CACHE`, else `jax/` in the dataset cache folder
    (`LIF_SBI_CACHE`, else `cache/` beside `results/`; `lif_sbi.config.CACHE_DIR`), at most 1 GB, least recently used entries
    dropped first (JAX's own cache, with its locking). `LIF_SBI_JAX_CACHE=""` turns it off; a cache
    folder the user gave JAX itself (`JAX_COMPILATION_CACHE_DIR`) is left as it is. Returns the
    folder in use."""
    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    folder = os.environ.get("LIF_SBI_JAX_CACHE")
    if folder is None:
        from lif_sbi.config import CACHE_DIR  # the datasets' folder, wherever the package is installed

        folder = str(CACHE_DIR / "jax")
    if not folder:
        return None
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # the eager ops take ~10-50 ms each
    jax.config.update("jax_compilation_cache_max_size", 1 << 30)
    return folder


compilation_cache_dir = _use_persistent_compilation_cache()


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
    return _scan_gru(x, h0, kernel, recurrent_kernel, bias, return_sequences=return_sequences, unroll=SCAN_UNROLL)


#: Time steps per iteration of the GRU's ``lax.scan`` loop (its ``unroll``), read at each call
#: (a benchmark can set it). On a GPU each loop iteration costs a fixed overhead that unrolling
#: removes; on the CPU it only costs compile time. bench/bench_training.py::test_jax_gru_scan_unroll,
#: reference network's step at unroll 1 / 4 / 16: H100 (2026-11-26) 23.1 / 13.6 / 13.4 ms, its
#: first call (compilation) 8.7 / 9.2 / 12.0 s; 2-core CPU 672 / 736 / 1,046 ms. 4 on an
#: accelerator: 16 saves 0.2 ms a step for 3 s more per compilation. Chosen by JAX's default
#: device (a computation placed elsewhere by hand keeps this choice).
SCAN_UNROLL = 1 if jax.default_backend() == "cpu" else 4


# Jitted at module level so that an eager call (sampling, inference: Keras does not jit those
# under JAX) compiles once per input shape. A scan over a step function created anew in each call
# would be traced and compiled again at every call: one recording's posterior with the reference
# network takes 458 ms that way on the CPU, 64 ms this way (bench/bench_training.py -k
# test_posterior_one_trace). Inside a jitted training step it is inlined.
@functools.partial(jax.jit, static_argnames=("return_sequences", "unroll"))
def _scan_gru(x, h0, kernel, recurrent_kernel, bias, *, return_sequences: bool, unroll: int):
    """One GRU: x (batch, time, in), h0 (batch, u), Keras weights; see ``_scan_grus``."""
    out = _scan_grus(x[None], h0[None], kernel[None], recurrent_kernel[None], bias[None], return_sequences=return_sequences, unroll=unroll)
    return out[0]


@functools.partial(jax.jit, static_argnames=("return_sequences", "unroll"))
def _scan_grus(x, h0, kernel, recurrent_kernel, bias, *, return_sequences: bool, unroll: int):
    """G independent GRUs of one shape in one ``lax.scan``: x (G, batch, time, in), h0 (G, batch,
    u), kernel (G, in, 3u), recurrent_kernel (G, u, 3u), bias (G, 2, 3u) -> (G, batch, time, u)
    or (G, batch, u). Written by hand (Keras' JAX GRU is one layer's scan): each time step is one
    batched product for all G GRUs, so G GRUs take as many sequential steps as one."""
    x_proj = jnp.einsum("gbtf,gfv->tgbv", x, kernel) + bias[None, :, None, 0]  # (time, G, batch, 3u)
    b_h = bias[:, None, 1]  # (G, 1, 3u)

    def step(h, xp):
        hp = jnp.einsum("gbu,guv->gbv", h, recurrent_kernel) + b_h
        x_z, x_r, x_h = jnp.split(xp, 3, axis=-1)
        h_z, h_r, h_h = jnp.split(hp, 3, axis=-1)
        z = jax.nn.sigmoid(x_z + h_z)
        r = jax.nn.sigmoid(x_r + h_r)
        hh = jnp.tanh(x_h + r * h_h)
        h = z * h + (1.0 - z) * hh
        return h, h if return_sequences else None

    last, states = jax.lax.scan(step, h0, x_proj, unroll=unroll)
    return jnp.moveaxis(states, 0, 2) if return_sequences else last


def gru_many(calls, *, return_sequences: bool):
    """Independent GRUs (see lif_sbi.backends): those of one input and weight shape run together
    in one scan (``_scan_grus``), the reference network's two directions in 501 sequential steps
    instead of 1,002; the others one after the other."""
    calls = [tuple(_as_array(a) for a in call) for call in calls]
    groups: dict = {}  # (shape, dtype) of the four arrays -> indices of the calls
    for i, call in enumerate(calls):
        groups.setdefault(tuple((a.shape, a.dtype) for a in call), []).append(i)
    results = [None] * len(calls)
    for members in groups.values():
        if len(members) == 1:
            (i,) = members
            results[i] = gru(*calls[i], return_sequences=return_sequences)
            continue
        x, kernel, recurrent_kernel, bias = (jnp.stack([calls[i][j] for i in members]) for j in range(4))
        x = x.astype(kernel.dtype)
        h0 = jnp.zeros(x.shape[:2] + (recurrent_kernel.shape[1],), dtype=x.dtype)
        out = _scan_grus(x, h0, kernel, recurrent_kernel, bias, return_sequences=return_sequences, unroll=SCAN_UNROLL)
        for k, i in enumerate(members):
            results[i] = out[k]
    return results


def conv1d(inputs, kernel, *, strides: int, padding: str):
    """1-D convolution, Keras' layout ((batch, time, in) * (k, in, out) -> (batch, time', out),
    no bias): Keras' own op, already the backend's fast path."""
    return keras.ops.conv(inputs, kernel, strides=strides, padding=padding, data_format="channels_last")


def compile_inference(approximator) -> None:
    """Run a BayesFlow approximator's inference-time summary network and flow sampling as jitted
    XLA programs, one per input shape.

    BayesFlow calls both eagerly, and eager JAX compiles every operation on its own for every new
    input shape (107 compilations for a new shape, 3 jitted: tests/test_backends_jax.py, compiled
    inference); eager, the `reference` run's diagnostics take 96 s on an H200, nearly all
    of it compiling. Jitted, a fresh process's 400 x 1,000 posterior takes 10.2-10.7 s instead of
    16.9-17.4 s on the 2-core CPU and 32 s instead of more than 78 s on the H200
    (bench/inference_compile.py). The draws are the same as the eager ones (the same random
    stream, to float32 rounding) and the seed generator advances as it would have. Used by
    `lif_sbi.estimator` on every approximator it builds or loads. Replaces the approximator's
    `sampler` and `condition_builder` (neither is saved with the model) unless they are of types
    other than BayesFlow's defaults; training's condition resolution (`purpose="metrics"`) is
    BayesFlow's own."""
    if type(getattr(approximator, "sampler", None)) is Sampler:
        approximator.sampler = _JitSampler()
    if type(getattr(approximator, "condition_builder", None)) is ConditionBuilder:
        approximator.condition_builder = _JitConditionBuilder()


def _stateless_program(layer, fn, extra_state=()):
    """jax.jit of ``fn(*args, **static)`` with `layer`'s variables (and the variables in
    `extra_state`) read from the program's first argument, a list of their values, instead of
    being baked in as constants; keyword arguments are static (a new value traces again). Returns
    ``program(*args, **static) -> result``, which also writes the new values of the non-trainable
    variables (seed generator states) back.
    Written by hand: Keras' ``stateless_call`` covers a layer's ``call`` only, not ``sample``."""
    variables = list(layer.variables) + list(extra_state)
    written = [v for v in variables if not v.trainable]

    @functools.partial(jax.jit, static_argnames=("static",))
    def run(values, args, static):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))) as scope:
            result = fn(*args, **dict(static))
        return result, [scope.get_current_value(v) for v in written]

    def program(*args, **static):
        result, new = run([v.value for v in variables], args, tuple(sorted(static.items())))
        for variable, value in zip(written, new):
            variable.assign(value)
        return result

    return program


class _JitSampler(Sampler):
    """BayesFlow's Sampler with each batch's flow sampling one jitted program (see compile_inference)."""

    def __init__(self):
        super().__init__()
        self._programs = {}  # (id of the inference network, seeded) -> program
        self._seed = None  # stands in for the caller's seed generator inside the program

    def _sample_batch(self, *, inference_network, num_samples, conditions, sample_shape, masking_names=(), seed=None, **kwargs):
        seeded = isinstance(seed, keras.random.SeedGenerator)
        if conditions is None or kwargs or not (seed is None or seeded):  # what the program does not cover: BayesFlow's own
            return super()._sample_batch(inference_network=inference_network, num_samples=num_samples, conditions=conditions,
                                         sample_shape=sample_shape, masking_names=masking_names, seed=seed, **kwargs)
        conditions = self.repeat_and_flatten_conditions(conditions, num_samples)
        batch_shape = (keras.ops.shape(conditions)[0],) + tuple(self.infer_sample_shape(conditions, sample_shape))
        if self._seed is None:
            self._seed = keras.random.SeedGenerator(0)
        key = (id(inference_network), seeded)
        if key not in self._programs:
            own = self._seed

            def sample(conditions, *, batch_shape):
                return inference_network.sample(batch_shape, conditions=conditions, seed=own if seeded else None)

            self._programs[key] = _stateless_program(inference_network, sample, [own.state])
        if seeded:  # the caller's generator (a new one per `approximator.sample` call) through ours
            self._seed.state.assign(seed.state.value)
        samples = self._programs[key](conditions, batch_shape=batch_shape)
        if seeded:
            seed.state.assign(self._seed.state.value)
        return self.unflatten_samples(samples, num_samples)


class _JitConditionBuilder(ConditionBuilder):
    """BayesFlow's ConditionBuilder with the summary network's inference-time call one jitted
    program per batch shape (see compile_inference)."""

    def __init__(self):
        super().__init__()
        self._programs = {}  # id of the summary network -> program

    def resolve(self, summary_network, inference_conditions, summary_variables, summary_outputs, stage, purpose, batch_size, **summary_kwargs):
        if purpose != "call" or summary_network is None or summary_outputs is not None or summary_kwargs or not keras.ops.is_tensor(summary_variables):
            return super().resolve(summary_network=summary_network, inference_conditions=inference_conditions,
                                   summary_variables=summary_variables, summary_outputs=summary_outputs, stage=stage,
                                   purpose=purpose, batch_size=batch_size, **summary_kwargs)
        program = self._programs.get(id(summary_network))
        if program is None:
            program = self._programs[id(summary_network)] = _stateless_program(summary_network, summary_network)
        n = summary_variables.shape[0]
        step = batch_size or n
        summary_outputs = jnp.concatenate([program(summary_variables[i: i + step]) for i in range(0, n, step)])
        return concatenate_valid((inference_conditions, summary_outputs), axis=-1), summary_outputs


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


def prepare_training(model, *, record_steps: bool = True, compile_steps: bool = True, state: dict | None = None) -> None:
    """Nothing to prepare: jax.jit traces the step once whatever the optimizer's and gradients' state."""


def training_state(model) -> dict:
    """Nothing: a jitted step is the same step at every call, resumed or not."""
    return {}


def train_step_function(model, *, record_steps: bool = True, compile_steps: bool = True):
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
