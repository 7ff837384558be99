"""Training batches and random streams that are functions of (seed, epoch, batch): what makes a resumed run the run it would have been."""

from __future__ import annotations

import bayesflow as bf
import keras
import numpy as np

from . import backends

# Key spaces of `derived_seed`: one per kind of thing seeded, so no two streams share a seed.
EPOCH, STAGE, ORDER = 0, 1, 2


def derived_seed(seed: int, *key: int) -> int:
    """A 31-bit seed for `key` under the run's `seed` (NumPy's SeedSequence mixes them)."""
    return int(np.random.SeedSequence([int(seed), *map(int, key)]).generate_state(1)[0] >> 1)


class Batches(bf.datasets.OfflineDataset):
    """BayesFlow's offline dataset whose epoch `e` visits the traces in the order
    `default_rng(derived_seed(seed, ORDER, e)).permutation(N)`. `noise` (a `noise.FreshNoise`,
    applied first) draws from a generator keyed by (epoch, batch), whatever order Keras fetches
    the batches in; `augmentations` follow it. BayesFlow's own dataset shuffles with NumPy's
    global generator once per epoch end, so a run resumed at epoch 4 would replay epoch 1's
    order; written by hand for that reason. `EpochSeeds` calls `set_epoch` before each epoch."""

    def __init__(self, data, batch_size: int, adapter, *, seed: int, noise=None, augmentations=()):
        augmentations = ([noise.on_batch] if noise is not None else []) + list(augmentations)
        super().__init__(data, batch_size=batch_size, adapter=adapter, augmentations=augmentations or None, shuffle=False)
        self.seed, self.noise = int(seed), noise
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.indices = np.random.default_rng(derived_seed(self.seed, ORDER, epoch)).permutation(self.num_samples)

    def shuffle(self) -> None:
        """No-op: the order is a function of the epoch (`set_epoch`), not of a global generator."""

    def __getitem__(self, item: int):
        if self.noise is not None:
            self.noise.reseed(self.epoch, int(item))
        return super().__getitem__(item)


def seed_generators(model) -> list:
    """The state variables of the Keras seed generators inside `model` (its dropout layers'), in
    a fixed order: model.variables holds them, model.weights does not."""
    weights = {id(v) for v in model.weights}
    return [v for v in model.variables if id(v) not in weights and "seed_generator" in v.path]


def reseed(model, seed: int, epoch: int) -> None:
    """Every random stream training draws from, set from (seed, epoch): Python's, NumPy's and the
    backend's global generators and Keras' global seed (`backends.set_seed`; PyTorch's dropout
    draws from its global generator), and the state of each of the model's seed generators
    (TensorFlow's and JAX's dropout draw from those)."""
    backends.set_seed(derived_seed(seed, EPOCH, epoch))
    for i, state in enumerate(seed_generators(model)):
        value = np.array([derived_seed(seed, EPOCH, epoch, i), 0])
        state.assign(keras.ops.convert_to_tensor(value, dtype=state.dtype))


def reseed_stage(seed: int, stage: int) -> None:
    """The global generators set from (seed, stage) at the start of a run's stage, so a stage
    run again after a resume starts from the state it had in an uninterrupted run."""
    backends.set_seed(derived_seed(seed, STAGE, stage))


class EpochSeeds(keras.callbacks.Callback):
    """Before each epoch: the dataset's order (`Batches.set_epoch`) and every random stream
    (`reseed`) set from (seed, epoch). Keras calls on_epoch_begin before the epoch's first batch
    is fetched; it must come first among the callbacks."""

    def __init__(self, dataset: Batches, seed: int):
        super().__init__()
        self.dataset, self.seed = dataset, int(seed)

    def on_epoch_begin(self, epoch, logs=None):
        self.dataset.set_epoch(epoch)
        reseed(self.model, self.seed, epoch)
