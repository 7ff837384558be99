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
