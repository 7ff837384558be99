"""The time grid and the injected currents: the reference study's coloured stimulus, steps, ramps and a user's waveform."""

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
# Rows per block of `current` on the CPU: the FFT's complex (rows, 1024) temporaries stay in cache.
# One block of all rows is about 2.3x slower at N = 1e5 (`bench/bench_simulator.py -k stimulus`).
CPU_ROWS = 128


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
    kernel_spectrum = torch.fft.rfft(kernel, n=n_fft)
    start = (n - 1) // 2
    t = torch.arange(n, dtype=white.dtype, device=white.device) * dt_s
    sine = torch.sin(2 * torch.pi * SINE_FREQ_HZ * t)
    out = torch.empty_like(white)
    rows = CPU_ROWS if white.device.type == "cpu" else max(1, white.shape[0])
    for lo in range(0, white.shape[0], rows):  # row blocks: each row's numbers do not depend on the block
        c = torch.fft.irfft(torch.fft.rfft(white[lo : lo + rows], n=n_fft) * kernel_spectrum, n=n_fft)[:, start : start + n]
        c = c / (c.abs().amax(dim=1, keepdim=True) + NORM_EPS)
        out[lo : lo + rows] = amplitude_a[lo : lo + rows, None] * (1.0 + SINE_DEPTH * sine + NOISE_DEPTH * c)
    return out


def sample_current(
    n: int,
    generator: torch.Generator | None = None,
    *,
    device=None,
    dtype=torch.float64,
    n_samples: int = N_SAMPLES,
    dt_s: float = DT_S,
    amplitude_a: tuple[float, float] = (AMPLITUDE_LOW_A, AMPLITUDE_HIGH_A),
):
    """Draw `n` coloured stimuli (the reference study's): returns (current (n, n_samples) in A,
    amplitude_a (n,) in A, white (n, n_samples)). The defaults are the reference's grid and range."""
    white = torch.randn((n, n_samples), generator=generator, device=device, dtype=torch.float64)
    u = torch.rand((n,), generator=generator, device=device, dtype=torch.float64)
    low, high = amplitude_a
    amplitude_a = low + u * (high - low)
    return current(white, amplitude_a, dt_s).to(dtype), amplitude_a, white


# ---------------------------------------------------------------------------------------------
# Protocols an experimenter injects (`[stimulus]` in a configuration, lif_sbi.config.StimulusConfig)

PROTOCOLS: tuple[str, ...] = ("coloured", "step", "ramp", "file")


def n_samples_of(duration_s: float, dt_s: float) -> int:
    """Samples t_i = i dt, i = 0 ... round(duration / dt): 501 for the reference's 50 ms at 0.1 ms."""
    return int(round(duration_s / dt_s)) + 1


def time_grid(duration_s: float = T_S, dt_s: float = DT_S) -> np.ndarray:
    """(n_samples,) sample times in s."""
    return np.arange(n_samples_of(duration_s, dt_s)) * dt_s


def pulse(amplitude_a, onset_s, width_s, n_samples: int, dt_s: float, *, ramp: bool = False) -> torch.Tensor:
    """Steps (or ramps) of height `amplitude_a` from `onset_s` for `width_s`, each (N,) (NumPy or
    torch): I(t_i) = a on onset <= t_i < onset + width (ramp: rising linearly from 0 at the onset to a
    at its end), 0 elsewhere. Returns (N, n_samples) float64 in A."""
    a, onset, width = (torch.as_tensor(x, dtype=torch.float64)[:, None] for x in (amplitude_a, onset_s, width_s))
    t = torch.arange(n_samples, dtype=torch.float64)[None, :] * dt_s
    on = (t >= onset) & (t < onset + width)
    shape = (t - onset) / width if ramp else torch.ones_like(t)
    return torch.where(on, a * shape, torch.zeros(()))


def _uniform(n: int, low: float, high: float, generator) -> torch.Tensor:
    return low + torch.rand((n,), generator=generator, dtype=torch.float64) * (high - low)


def sample_protocol(protocol: str, n: int, generator, spec) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` currents (n, n_samples) float64 in A of one protocol, and their amplitudes (n,) in A (the
    coloured mean or step height; a file waveform's scale factor times its largest |value|).
    `spec`: a `lif_sbi.config.StimulusConfig`."""
    n_samples = n_samples_of(spec.duration_s, spec.dt_s)
    amplitude = (spec.amplitude_low_a, spec.amplitude_high_a)
    if protocol == "coloured":
        cur, amp, _ = sample_current(n, generator, n_samples=n_samples, dt_s=spec.dt_s, amplitude_a=amplitude)
        return cur, amp
    if protocol in ("step", "ramp"):
        amp = _uniform(n, *amplitude, generator)
        onset = _uniform(n, spec.onset_low_s, spec.onset_high_s, generator)
        width = _uniform(n, spec.width_low_s, spec.width_high_s, generator)
        return pulse(amp, onset, width, n_samples, spec.dt_s, ramp=protocol == "ramp"), amp
    if protocol == "file":
        wave = torch.as_tensor(load_waveform(spec), dtype=torch.float64)
        scale = _uniform(n, spec.file_scale_low, spec.file_scale_high, generator)
        return scale[:, None] * wave[None, :], scale * wave.abs().max()
    raise ValueError(f"stimulus protocol must be one of {', '.join(PROTOCOLS)}; got {protocol!r}")


def sample_stimulus(n: int, generator: torch.Generator | None, spec) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw `n` currents of `spec.protocols` (one protocol: all of it; several: each trace one of them
    with equal probability). Returns (current (n, n_samples) float64 in A, amplitude (n,) in A)."""
    protocols = tuple(spec.protocols)
    if len(protocols) == 1:
        return sample_protocol(protocols[0], n, generator, spec)
    pick = torch.randint(len(protocols), (n,), generator=generator)
    drawn = [sample_protocol(p, n, generator, spec) for p in protocols]
    current = torch.stack([c for c, _ in drawn])[pick, torch.arange(n)]
    amplitude = torch.stack([a for _, a in drawn])[pick, torch.arange(n)]
    return current, amplitude


def _read_waveform(path: str, spec) -> tuple[np.ndarray, float]:
    """The waveform file's samples (n,) float64 in A and their step in s."""
    if path.lower().endswith(".abf"):
        import pyabf

        abf = pyabf.ABF(path)
        if not 0 <= int(spec.file_sweep) < abf.sweepCount:
            raise ValueError(f"stimulus.file_sweep = {spec.file_sweep} is not a sweep of it (0 to {abf.sweepCount - 1})")
        abf.setSweep(int(spec.file_sweep))
        return np.asarray(abf.sweepC, dtype=np.float64) * 1e-12, 1.0 / abf.dataRate
    lower = path.lower()
    values = np.load(path) if lower.endswith(".npy") else np.loadtxt(path, delimiter="," if lower.endswith(".csv") else None)
    values = np.asarray(values, dtype=np.float64)
    if values.ndim > 1 and sum(n > 1 for n in values.shape) > 1:
        raise ValueError(f"expected one column of current values in A, got an array of shape {values.shape}")
    return values.reshape(-1), spec.file_dt_s or spec.dt_s


def load_waveform(spec) -> np.ndarray:
    """The `file` protocol's command waveform on the model's grid: (n_samples,) float64 in A.

    `spec.file`: an ABF recording (pyabf: the command channel of sweep `spec.file_sweep`, in pA,
    at the file's own sampling rate), or .npy / .csv / .txt holding one value per sample in A at
    `spec.file_dt_s` (0: the model's `dt_s`). The model's window starts `spec.file_start_s` into
    the waveform; each model sample takes the waveform's value at or just before its time (a
    zero-order hold: commands are piecewise constant, so no smoothing)."""
    path = str(spec.file)
    try:
        values, dt = _read_waveform(path, spec)
    except (OSError, ValueError, IndexError) as err:  # missing, unreadable, a header line, no such sweep
        raise ValueError(f"stimulus.file {path!r} could not be read as a waveform: {err}") from None
    t = spec.file_start_s + time_grid(spec.duration_s, spec.dt_s)
    k = np.floor(t / dt + 1e-9).astype(np.int64)
    if k[-1] >= len(values):
        raise ValueError(f"stimulus.file {path!r} holds {len(values) * dt:g} s of waveform; the window needs "
                         f"{t[-1] + dt:g} s (stimulus.file_start_s + stimulus.duration_s)")
    if not np.isfinite(values[k]).all():
        raise ValueError(f"stimulus.file {path!r}: the waveform holds NaN or inf inside the window")
    return values[k]
