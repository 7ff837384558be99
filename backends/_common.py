"""Helpers shared by more than one backend module (not part of the backend interface)."""

from __future__ import annotations

import keras


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
