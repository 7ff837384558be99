"""Everything that differs between Keras backends, behind one small interface.

The backend module is chosen once, at import, from ``keras.backend.backend()`` (that is, from
``KERAS_BACKEND``); its public names are re-exported here. Nothing else in the project may branch
on the backend's name: import what you need from ``lif_sbi.backends``.

Interface (every backend module provides it):

- ``name``: the Keras backend's name ("torch", "tensorflow" or "jax").
- ``gru(inputs, kernel, recurrent_kernel, bias, *, return_sequences, initial_state=None)``: a GRU
  forward pass with the weight layout of ``keras.layers.GRU(reset_after=True)`` (kernel (in, 3u),
  recurrent_kernel (u, 3u), bias (2, 3u), gates in Keras order z, r, h) on the backend's fastest
  kernel; differentiable w.r.t. inputs and weights. Returns (batch, time, u) or (batch, u).
- ``gru_many(calls, *, return_sequences)``: ``[gru(*call, return_sequences=...) for call in
  calls]`` for independent GRUs, each call ``(inputs, kernel, recurrent_kernel, bias)``; the
  backend may run them side by side (torch on the CPU: one thread per GRU).
- ``conv1d(inputs, kernel, *, strides, padding)``: a 1-D convolution in Keras' layout (inputs
  (batch, time, in), kernel (k, in, out), padding "valid" or "same"), without bias, on the
  backend's fastest path (torch: a channels-last 2-D convolution). Returns (batch, time', out).
- ``set_seed(seed)``: seeds Python, NumPy, the backend framework and Keras.
- ``device_name()``: human-readable name of the device the backend computes on.
- ``train_step_function(model, *, record_steps=True, compile_steps=True)``: a callable ``step(batch) -> metrics`` that runs one optimizer
  step of a compiled Keras model (a BayesFlow approximator) on one adapted batch (a dict of
  arrays), compiled the way ``model.fit`` compiles it (``tf.function`` under TensorFlow, ``jit``
  under JAX, eager under torch, or under torch with ``record_steps=True``, the default, recorded once
  per batch shape and replayed, and on the CPU with ``compile_steps=True`` compiled by inductor
  once a shape has been replayed a few hundred times). For benchmarks and hand-written loops.
- ``prepare_training(model, *, record_steps=True, compile_steps=True, state=None)``: called once before ``fit``; sets up what the
  backend's step needs (torch with ``jit_compile``: optimizer variables and gradient buffers so
  that torch.compile traces the step once; torch's eager steps: on the CPU, Keras' Adam on flat
  buffers (the same numbers in fewer operations), and with ``record_steps`` each batch shape's
  step recorded once and replayed, as a CUDA graph on a GPU, as a traced aten program on the
  CPU, there compiled by inductor once replayed often, with ``compile_steps``); a no-op under TensorFlow and JAX, whose steps are compiled already.
  ``state`` is what ``training_state`` returned at the checkpoint a run resumes from.
- ``training_state(model)``: what decides how the coming steps run (torch: the step recorders'
  counters per batch shape), as JSON for a checkpoint, so that a resumed run records and compiles
  its steps where the uninterrupted run did; ``{}`` under TensorFlow and JAX.
- ``training_step_kind(model)``: how ``fit`` runs the step, in words, for the run's log and report.
- ``compile_inference(approximator)``: makes a BayesFlow approximator's inference-time summary
  network and flow sampling run the backend's fastest way, with the same draws (JAX: one jitted
  XLA program per input shape instead of every eager operation compiled on its own; torch and
  TensorFlow: the flow's sampling pass of a batch shape sampled again and again recorded once,
  as a traced aten program or a ``tf.function``, and replayed).
"""

from __future__ import annotations

import importlib

import keras

__all__ = ["name", "gru", "gru_many", "conv1d", "set_seed", "device_name", "train_step_function", "prepare_training", "training_state", "training_step_kind", "compile_inference", "module"]

_MODULES = {"torch": ".torch", "tensorflow": ".tensorflow", "jax": ".jax"}

_backend = keras.backend.backend()
if _backend not in _MODULES:
    raise ImportError(
        f"lif_sbi supports the Keras backends {sorted(_MODULES)}; KERAS_BACKEND selects {_backend!r}"
    )

#: the backend module in use (lif_sbi.backends.torch, .tensorflow or .jax)
module = importlib.import_module(_MODULES[_backend], __name__)

name: str = module.name
gru = module.gru
gru_many = module.gru_many
conv1d = module.conv1d
set_seed = module.set_seed
device_name = module.device_name
train_step_function = module.train_step_function
prepare_training = module.prepare_training
training_state = module.training_state
training_step_kind = module.training_step_kind
compile_inference = module.compile_inference
