"""Measurement noise on the observed voltage: Gaussian, fixed (seeded) for validation and test traces, fresh for every training draw."""

from __future__ import annotations

import numpy as np


def add_noise(observables: np.ndarray, sd_v: float, seed: int) -> np.ndarray:
    """observables (N, T, 1) V plus independent N(0, sd_v²) per sample, from a generator seeded
    by `seed`: a new float32 array (the input itself where sd_v is 0)."""
    if sd_v == 0.0:
        return observables
    rng = np.random.default_rng(seed)
    return (observables + rng.normal(0.0, sd_v, size=observables.shape)).astype(np.float32)


class FreshNoise:
    """A BayesFlow augmentation for a batch's "observables" (N, T, 1) V: new Gaussian noise of sd
    `sd_v` every time a trace is drawn into a batch, from a generator seeded by `seed` and, after
    `reseed(*key)`, by (seed, *key): `batches.Batches` keys it by (epoch, batch), so the same
    batch of the same run gets the same noise, resumed or not. BayesFlow applies augmentations
    to training batches before its adapter (`bf.datasets.OfflineDataset(augmentations=...)`);
    written by hand because BayesFlow has no noise transform."""

    def __init__(self, sd_v: float, seed: int):
        self.sd_v = float(sd_v)
        self.seed = int(seed)
        self.rng = np.random.default_rng(seed)

    def reseed(self, *key: int) -> None:
        """Draw from now on from a generator seeded by (seed, *key)."""
        self.rng = np.random.default_rng([self.seed, *key])

    def __call__(self, observables: np.ndarray) -> np.ndarray:
        return (observables + self.rng.normal(0.0, self.sd_v, size=observables.shape)).astype(np.float32)

    def on_batch(self, batch: dict) -> dict:
        """The same, as an augmentation of a whole batch: its "observables" made noisy."""
        return {**batch, "observables": self(batch["observables"])}
