"""Helpers shared by more than one backend module (not part of the backend interface)."""

from __future__ import annotations

import keras
from bayesflow.approximators.helpers.samplers import Sampler
from bayesflow.utils.keras_utils import resolve_seed


def seed_keras(seed: int) -> None:
    """Keras' own global seed, without importing TensorFlow.

    keras.utils.set_random_seed also imports TensorFlow (when installed) just to seed it, which
    costs seconds and prints TF's start-up lines in a torch or JAX run; this does its Keras part.
    """
    try:
        from keras.src.backend.common import global_state
        from keras.src.random import seed_generator

        global_state.set_global_attribute("global_random_seed", int(seed))
        global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)
    except (ImportError, AttributeError):  # a Keras whose internals moved
        keras.utils.set_random_seed(int(seed))


def gru_many_in_turn(gru):
    """The backend interface's ``gru_many`` as one GRU after the other, for backends whose compiled
    step (``tf.function``, XLA) already schedules independent GRUs side by side."""

    def gru_many(calls, *, return_sequences: bool):
        return [gru(*call, return_sequences=return_sequences) for call in calls]

    return gru_many


def training_step_kind(model) -> str:
    """How ``fit`` runs a compiled Keras model's training step, for the run's log and report."""
    return "compiled (jit_compile)" if model.jit_compile else "eager"


class RecordedSampler(Sampler):
    """BayesFlow's Sampler with the flow's inverse pass (base draws -> parameters) recorded per
    batch shape and replayed, for backends that sample eagerly (``compile_inference`` under torch
    and TensorFlow). The base distribution's draws are made eagerly, by BayesFlow and Keras as
    before (the same random stream); the first ``WARMUP`` calls of a shape run eagerly, the next
    is recorded (``_record``, by the subclass: a traced aten program, a ``tf.function``), later
    ones run the record. A shape whose recording fails stays eager. Calls this does not cover (no
    conditions, extra keyword arguments) are BayesFlow's own. Written by hand: BayesFlow samples
    eagerly, and Keras compiles whole steps, not a layer's inverse pass."""

    # Eager calls of a batch shape before it is recorded. A torch trace cost about 0.7 s on the
    # 2-core CPU (make_fx's Python per operation; timed ad hoc) and a replay saves about 30-45 ms
    # against an eager call, so a shape pays back after a few dozen calls: eight mark a shape sampled again
    # and again (a loop over recordings), which the diagnostics' rejection rounds, a few calls
    # per shape, are not (bench/RESULTS.md, "Recorded sampling under torch and TensorFlow").
    WARMUP = 8
    # On the CPU only batches of up to this many draws are recorded: larger ones are compute-bound
    # (torch, 100 recordings x 500 draws: 375 ms traced against 498 ms eager,
    # bench_training.py test_recorded_sampling), not worth a recording for the
    # few calls a diagnostics pass makes of each shape. On a GPU every batch is launch-bound.
    MAX_CPU_DRAWS = 4096
    MAX_PROGRAMS = 32  # batch shapes recorded per sampler; later new shapes run eagerly

    def __init__(self):
        super().__init__()
        self._seen: dict[tuple, int] = {}
        self._programs: dict[tuple, object] = {}  # shape key -> record, or None (stays eager)

    def _sample_batch(self, *, inference_network, num_samples, conditions, sample_shape, masking_names=(), seed=None, **kwargs):
        if conditions is None or kwargs or not keras.ops.is_tensor(conditions):
            return super()._sample_batch(inference_network=inference_network, num_samples=num_samples, conditions=conditions,
                                         sample_shape=sample_shape, masking_names=masking_names, seed=seed, **kwargs)
        # BayesFlow's InferenceNetwork.sample, with the inverse pass recorded
        conditions = self.repeat_and_flatten_conditions(conditions, num_samples)
        batch_shape = (keras.ops.shape(conditions)[0],) + tuple(self.infer_sample_shape(conditions, sample_shape))
        seed = resolve_seed(seed)
        z = inference_network.base_distribution.sample(batch_shape, seed=seed)

        def inverse(z, conditions):
            return inference_network(z, conditions=conditions, inverse=True, density=False, seed=seed)

        on_cpu = "cpu" in str(getattr(z, "device", "cpu")).lower()
        key = (id(inference_network), tuple(z.shape), str(z.dtype), tuple(conditions.shape), str(conditions.dtype), str(z.device))
        program = self._programs.get(key)
        if program is not None:
            samples = self._run(program, z, conditions)
        elif (key in self._programs or self._seen.get(key, 0) < self.WARMUP or len(self._programs) >= self.MAX_PROGRAMS
              or (on_cpu and z.shape[0] > self.MAX_CPU_DRAWS)):
            self._seen[key] = self._seen.get(key, 0) + 1
            samples = self._eager(inverse, z, conditions)
        else:
            try:
                self._programs[key], samples = self._record(inverse, z, conditions)
            except Exception:  # noqa: BLE001 - whatever stops the recording (sampling has no side effects): eager
                self._programs[key] = None
                samples = self._eager(inverse, z, conditions)
        return self.unflatten_samples(samples, num_samples)

    def _record(self, inverse, z, conditions):
        """Record ``inverse`` for this batch shape: (the record, this call's samples)."""
        raise NotImplementedError

    def _run(self, program, z, conditions):
        raise NotImplementedError

    def _eager(self, inverse, z, conditions):
        return inverse(z, conditions)
