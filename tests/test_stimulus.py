"""The stimulus: the batched FFT current equals the np.convolve('same') reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lif_sbi.stimulus import (
    AMPLITUDE_HIGH_A,
    AMPLITUDE_LOW_A,
    DT_S,
    N_SAMPLES,
    TIME_S,
    current,
    current_reference,
    noise_kernel,
    sample_current,
)


def max_rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    """max over rows of max|got - ref| / max|ref|."""
    return float(np.max(np.abs(got - ref).max(axis=1) / np.abs(ref).max(axis=1)))


def test_grid_and_kernel():
    assert N_SAMPLES == 501 and DT_S == 1e-4
    np.testing.assert_allclose(TIME_S[-1], 50e-3, rtol=1e-12)
    k = noise_kernel()
    assert k.shape == (501,) and k[0] == 1.0
    np.testing.assert_allclose(k[100], np.exp(-1.0), rtol=1e-14)  # j dt / tau = 100 * 0.1 ms / 10 ms


def test_reference_follows_the_design_text():
    """current_reference against DESIGN.md §2 written out with an explicit 'same' slice of the full convolution."""
    w = np.random.default_rng(3).standard_normal(501)
    a = 1.7e-9
    full = np.convolve(w, np.exp(-np.arange(501) * 1e-4 / 10e-3))  # 1001 samples
    c = full[250:751]  # np.convolve 'same': centred 501 samples
    c = c / (np.max(np.abs(c)) + 1e-9)
    t = np.arange(501) * 1e-4
    expected = a * (1 + 0.25 * np.sin(2 * np.pi * 10 * t) + 0.15 * c)
    np.testing.assert_allclose(current_reference(w, a), expected, rtol=1e-14, atol=0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_torch_current_matches_reference_float64(seed):
    rng = np.random.default_rng(seed)
    n = 64
    white = rng.standard_normal((n, N_SAMPLES))
    amp = rng.uniform(AMPLITUDE_LOW_A, AMPLITUDE_HIGH_A, n)
    got = current(torch.from_numpy(white), torch.from_numpy(amp))
    assert got.dtype == torch.float64 and got.shape == (n, N_SAMPLES)
    ref = np.stack([current_reference(w, a) for w, a in zip(white, amp)])
    assert max_rel_err(got.numpy(), ref) <= 1e-12


@pytest.mark.parametrize("amplitude", [AMPLITUDE_LOW_A, AMPLITUDE_HIGH_A])
def test_torch_current_at_amplitude_bounds(amplitude):
    white = np.random.default_rng(11).standard_normal((16, N_SAMPLES))
    amp = np.full(16, amplitude)
    got = current(white, amp).numpy()  # NumPy inputs accepted too
    ref = np.stack([current_reference(w, amplitude) for w in white])
    assert max_rel_err(got, ref) <= 1e-12
    # |c| <= 1 after normalisation, so I stays within a (1 +- 0.25 +- 0.15)
    assert got.min() >= amplitude * 0.6 * (1 - 1e-12) and got.max() <= amplitude * 1.4 * (1 + 1e-12)


@pytest.mark.parametrize("n_samples", [100, 257])  # even and odd lengths: the 'same' centring differs
def test_torch_current_other_lengths(n_samples):
    white = np.random.default_rng(n_samples).standard_normal((8, n_samples))
    amp = np.linspace(AMPLITUDE_LOW_A, AMPLITUDE_HIGH_A, 8)
    ref = np.stack([current_reference(w, a) for w, a in zip(white, amp)])
    assert max_rel_err(current(white, amp).numpy(), ref) <= 1e-12


def test_sample_current_is_reproducible_and_consistent():
    cur, amp, white = sample_current(200, torch.Generator().manual_seed(8))
    cur2, amp2, white2 = sample_current(200, torch.Generator().manual_seed(8))
    assert torch.equal(cur, cur2) and torch.equal(amp, amp2) and torch.equal(white, white2)
    assert not torch.equal(cur, sample_current(200, torch.Generator().manual_seed(9))[0])
    assert cur.shape == (200, N_SAMPLES) and amp.shape == (200,) and white.shape == (200, N_SAMPLES)
    assert bool(((amp >= AMPLITUDE_LOW_A) & (amp <= AMPLITUDE_HIGH_A)).all())
    ref = np.stack([current_reference(w, a) for w, a in zip(white.numpy(), amp.numpy())])
    assert max_rel_err(cur.numpy(), ref) <= 1e-12
    c32, _, _ = sample_current(200, torch.Generator().manual_seed(8), dtype=torch.float32)
    assert c32.dtype == torch.float32 and torch.equal(c32, cur.to(torch.float32))


def test_bad_shapes():
    with pytest.raises(ValueError, match="white must have shape"):
        current(np.zeros(501), np.ones(1))
    with pytest.raises(ValueError, match=r"amplitude_a must have shape \(3,\)"):
        current(np.zeros((3, 501)), np.ones(2))
