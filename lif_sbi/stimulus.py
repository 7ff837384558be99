"""The time grid and the coloured stimulus current of the reference study."""

from __future__ import annotations

import numpy as np
import torch

T_S = 50e-3  # trace duration, s
DT_S = 1e-4  # time step, s
N_SAMPLES = 501  # samples t_i = i * DT_S, i = 0 ... 500
TIME_S = np.arange(N_SAMPLES) * DT_S  # (501,) s

AMPLITUDE_LOW_A = 0.3e-9  # stimulus amplitude a ~ U(0.3, 3) nA
AMPLITUDE_HIGH_A = 3e-9
SINE_FREQ_HZ = 10.0
SINE_DEPTH = 0.25
NOISE_DEPTH = 0.15
NOISE_TAU_S = 10e-3
NORM_EPS = 1e-9


def noise_kernel(n: int = N_SAMPLES, dt_s: float = DT_S, tau_s: float = NOISE_TAU_S) -> np.ndarray:
    """k_j = exp(-j dt / tau), j = 0 ... n-1: (n,) float64."""
    return np.exp(-np.arange(n) * dt_s / tau_s)


def current_reference(white: np.ndarray, amplitude_a: float, dt_s: float = DT_S) -> np.ndarray:
    """The reference definition for one trace, in plain NumPy.

    white: (501,) standard-normal samples; amplitude_a: scalar in A. Returns I: (501,) in A.
    """
    white = np.asarray(white, dtype=np.float64)
    n = white.shape[0]
    t = np.arange(n) * dt_s
    c = np.convolve(white, noise_kernel(n, dt_s), mode="same")
    c = c / (np.max(np.abs(c)) + NORM_EPS)
    return amplitude_a * (1.0 + SINE_DEPTH * np.sin(2 * np.pi * SINE_FREQ_HZ * t) + NOISE_DEPTH * c)


def current(white, amplitude_a, dt_s: float = DT_S) -> torch.Tensor:
    """Batched stimulus on any device; same numbers as `current_reference` row by row.

    white: (N, 501) standard-normal samples; amplitude_a: (N,) in A (NumPy or torch).
    Returns I: (N, 501) in A, dtype and device of `white`.
    """
    white = torch.as_tensor(white)
    if not white.is_floating_point():
        white = white.to(torch.float64)
    amplitude_a = torch.as_tensor(amplitude_a, dtype=white.dtype, device=white.device)
    if white.ndim != 2:
        raise ValueError(f"white must have shape (N, samples), got {tuple(white.shape)}")
    n = white.shape[1]
    if amplitude_a.shape != (white.shape[0],):
        raise ValueError(f"amplitude_a must have shape ({white.shape[0]},), got {tuple(amplitude_a.shape)}")
    kernel = torch.as_tensor(noise_kernel(n, dt_s), dtype=white.dtype, device=white.device)
    # np.convolve(w, k, 'same') = the centred n samples of the full (2n-1)-sample convolution,
    # full[m] for m = (n-1)//2 ... (n-1)//2 + n - 1. Computed with a zero-padded real FFT:
    # torch's conv1d would build an (N, n, 2n) im2col buffer on the CPU.
    n_fft = 1 << (2 * n - 2).bit_length()  # power of two >= 2n - 1
    spectrum = torch.fft.rfft(white, n=n_fft) * torch.fft.rfft(kernel, n=n_fft)
    start = (n - 1) // 2
    c = torch.fft.irfft(spectrum, n=n_fft)[:, start : start + n]
    c = c / (c.abs().amax(dim=1, keepdim=True) + NORM_EPS)
    t = torch.arange(n, dtype=white.dtype, device=white.device) * dt_s
    sine = torch.sin(2 * torch.pi * SINE_FREQ_HZ * t)
    return amplitude_a[:, None] * (1.0 + SINE_DEPTH * sine + NOISE_DEPTH * c)


def sample_current(n: int, generator: torch.Generator | None = None, *, device=None, dtype=torch.float64):
    """Draw `n` stimuli: returns (current (n, 501) in A, amplitude_a (n,) in A, white (n, 501))."""
    white = torch.randn((n, N_SAMPLES), generator=generator, device=device, dtype=torch.float64)
    u = torch.rand((n,), generator=generator, device=device, dtype=torch.float64)
    amplitude_a = AMPLITUDE_LOW_A + u * (AMPLITUDE_HIGH_A - AMPLITUDE_LOW_A)
    return current(white, amplitude_a).to(dtype), amplitude_a, white
