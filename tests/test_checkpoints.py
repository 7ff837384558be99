"""Checkpoints: weights archives, Keras' HDF5 weights, and the refusal of another model's weights."""

from __future__ import annotations

import pytest

from lif_sbi import checkpoints


def test_checkpoint_weights_load_from_npz_and_from_keras_hdf5(tmp_path):
    """Checkpoints hold `model.get_weights()` as one .npz (fast); Keras' own HDF5 weights files
    load too; an archive of another model's weights is refused with ResumeError."""
    import keras
    import numpy as np

    def model(width=4):
        return keras.Sequential([keras.Input((3,)), keras.layers.Dense(width), keras.layers.BatchNormalization(), keras.layers.Dense(2)])

    saved, from_npz, from_h5 = model(), model(), model()
    saved.layers[1].moving_mean.assign(np.arange(4.0))  # a non-trainable weight travels too
    checkpoints.save_weights(saved, tmp_path / "model.weights.npz")
    saved.save_weights(str(tmp_path / "old.weights.h5"))
    assert not list(tmp_path.glob("*.tmp"))
    assert checkpoints.weights_file(tmp_path, "model") == tmp_path / "model.weights.npz"
    assert checkpoints.weights_file(tmp_path, "old") == tmp_path / "old.weights.h5"
    assert checkpoints.weights_file(tmp_path, "best") is None
    assert any(not np.array_equal(a, b) for a, b in zip(saved.get_weights(), from_npz.get_weights()))
    checkpoints.load_weights(from_npz, tmp_path / "model.weights.npz")
    checkpoints.load_weights(from_h5, tmp_path / "old.weights.h5")
    for loaded in (from_npz, from_h5):
        assert all(np.array_equal(a, b) for a, b in zip(saved.get_weights(), loaded.get_weights()))
    with pytest.raises(checkpoints.ResumeError, match="do not match this model"):
        checkpoints.load_weights(model(width=5), tmp_path / "model.weights.npz")
