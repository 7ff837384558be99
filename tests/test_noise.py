"""Measurement noise: add_noise (fixed per seed, for validation and test traces) and FreshNoise (new per draw)."""

from __future__ import annotations

import numpy as np
import pytest

from lif_sbi.noise import FreshNoise, add_noise

SD_V = 0.5e-3  # 0.5 mV


def traces(n: int = 200, t: int = 501, seed: int = 0) -> np.ndarray:
    """(n, t, 1) float32 voltages in V: a resting level near -70 mV with a slow wiggle per trace."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(-80e-3, -65e-3, size=(n, 1, 1))
    wiggle = 5e-3 * np.sin(np.linspace(0, 6, t))[None, :, None] * rng.uniform(0, 1, size=(n, 1, 1))
    return (base + wiggle).astype(np.float32)


def test_sd_zero_returns_the_input_unchanged():
    """add_noise with sd_v = 0 returns the input array itself, values untouched."""
    x = traces(seed=1)
    before = x.copy()
    out = add_noise(x, 0.0, seed=3)
    assert out is x
    np.testing.assert_array_equal(out, before)


def test_residual_has_the_requested_sd_and_zero_mean():
    """add_noise at 0.5 mV: residual sd within 2 % of 0.5 mV, mean within 4 standard errors of 0, float32 (N, T, 1)."""
    x = traces(seed=2)
    out = add_noise(x, SD_V, seed=7)
    assert out.shape == x.shape and out.dtype == np.float32
    r = out.astype(np.float64) - x.astype(np.float64)
    m = r.size  # 100,200 samples: sd's relative standard error ~ 1 / sqrt(2 m) = 0.2 %
    assert abs(r.std() / SD_V - 1) < 0.02, r.std()
    assert abs(r.mean()) < 4 * SD_V / np.sqrt(m), r.mean()
    # independent per sample: neighbours in time and across traces uncorrelated
    flat = r[..., 0]
    for a, b in ((flat[:, 1:], flat[:, :-1]), (flat[1:], flat[:-1])):
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 4 / np.sqrt(a.size)
    # Gaussian: about 68.3 % within one sd, 95.4 % within two
    assert abs(np.mean(np.abs(r) < SD_V) - 0.6827) < 0.01 and abs(np.mean(np.abs(r) < 2 * SD_V) - 0.9545) < 0.005


def test_add_noise_is_deterministic_per_seed_and_leaves_its_input_alone():
    """add_noise: the same seed gives the same bytes, another seed other noise; the input is not modified in place."""
    x = traces(seed=3)
    before = x.copy()
    a = add_noise(x, SD_V, seed=11)
    b = add_noise(x, SD_V, seed=11)
    c = add_noise(x, SD_V, seed=12)
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, c)
    assert a is not x and not np.shares_memory(a, x)
    np.testing.assert_array_equal(x, before)


def test_add_noise_scales_with_sd():
    """The same seed at twice the sd gives twice the residual (one standard-normal stream, scaled)."""
    x = np.zeros((50, 301, 1), np.float32)
    r1 = add_noise(x, 0.25e-3, seed=5).astype(np.float64)
    r2 = add_noise(x, 0.5e-3, seed=5).astype(np.float64)
    np.testing.assert_allclose(r2, 2 * r1, rtol=1e-6, atol=1e-12)


def test_fresh_noise_differs_per_call_and_repeats_per_seed():
    """FreshNoise: new noise on every call, the same sequence from the same seed, sd as asked, input untouched."""
    x = traces(seed=4)
    before = x.copy()
    aug = FreshNoise(SD_V, seed=42)
    first, second = aug(x), aug(x)
    assert first.dtype == np.float32 and first.shape == x.shape
    assert not np.array_equal(first, second)  # a trace drawn twice gets different noise
    r1, r2 = (y.astype(np.float64) - x for y in (first, second))
    assert abs(np.corrcoef(r1.ravel(), r2.ravel())[0, 1]) < 4 / np.sqrt(r1.size)  # independent draws
    for r in (r1, r2):
        assert abs(r.std() / SD_V - 1) < 0.02 and abs(r.mean()) < 4 * SD_V / np.sqrt(r.size)
    again = FreshNoise(SD_V, seed=42)
    assert again(x).tobytes() == first.tobytes() and again(x).tobytes() == second.tobytes()
    assert not np.array_equal(FreshNoise(SD_V, seed=43)(x), first)
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("shape", [(1, 2, 1), (7, 1001, 1), (3, 5001, 1)])
def test_noise_keeps_any_trace_length(shape):
    """add_noise and FreshNoise work for any (N, T, 1), the trace lengths of other windows and steps."""
    x = np.full(shape, -70e-3, np.float32)
    assert add_noise(x, SD_V, seed=0).shape == shape
    assert FreshNoise(SD_V, seed=0)(x).shape == shape
