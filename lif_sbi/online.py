"""Online training data (`data.mode = "online"`): a freshly simulated batch for every training step, a function of (seed, epoch, batch)."""

from __future__ import annotations

import math

import bayesflow as bf

from . import simulator
from .batches import derived_seed

ONLINE = 3  # `batches.derived_seed` key space of the online batches (EPOCH, STAGE, ORDER are 0, 1, 2)


class OnlineBatches(bf.datasets.OnlineDataset):
    """BayesFlow's online dataset whose batch `b` of epoch `e` is `batch_size` new (theta, trace)
    pairs, `simulator.simulate_batch(batch_size, derived_seed(seed, ONLINE, e, b), ...)` with the
    configured stimulus and prior on `device`, then `noise` (a `noise.FreshNoise` keyed by (e, b))
    and `augmentations`, then the adapter. BayesFlow's OnlineDataset draws from the simulator's
    own generator in fetch order, so a resumed run would see other batches; keyed by hand for
    that reason. An epoch has ceil(n_per_epoch / batch_size) batches, so epochs, learning-rate
    schedules and early stopping count as in an offline run of n_per_epoch training traces.
    `batches.EpochSeeds` calls `set_epoch` before each epoch. Only `keys` reach the adapter."""

    def __init__(self, n_per_epoch: int, batch_size: int, adapter, *, seed: int, keys: tuple[str, ...], stimulus, prior: str,
                 device: str = "cpu", noise=None, augmentations=()):
        augmentations = ([noise.on_batch] if noise is not None else []) + list(augmentations)
        super().__init__(simulator=None, batch_size=batch_size, num_batches=math.ceil(n_per_epoch / batch_size), adapter=adapter,
                         augmentations=augmentations)
        self.seed, self.keys, self.noise = int(seed), tuple(keys), noise
        self.stimulus, self.prior, self.device = stimulus, prior, device
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def raw(self, epoch: int, item: int) -> dict:
        """Batch `item` of `epoch` as simulated, noise-free and before the adapter: the arrays of
        `simulator.simulate_batch` (parameters (B, 6) SI, observables (B, T, 1) V, current (B, T) A, amplitude (B,) A)."""
        return simulator.simulate_batch(self.batch_size, derived_seed(self.seed, ONLINE, epoch, item), device=self.device,
                                        stimulus=self.stimulus, prior=self.prior)

    def __getitem__(self, item: int) -> dict:
        batch = {k: v for k, v in self.raw(self.epoch, int(item)).items() if k in self.keys}
        if self.noise is not None:
            self.noise.reseed(self.epoch, int(item))
        batch = bf.datasets.helpers.apply_augmentations(batch, self.augmentations)
        return self.adapter(batch) if self.adapter is not None else batch
