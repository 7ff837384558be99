"""Hand-made features of a trace and its known current, extra inputs of the estimator: fits of the membrane equation (`leak_features`) and spike times (`spike_features`)."""

from __future__ import annotations

import math

import numpy as np

from .priors import HIGH, INDEX

FEATURE_NAMES = ("dv_per_na", "dv_per_mv", "dv_offset", "fitted_share")  # per time scale, see `leak_features`
N_FEATURES = len(FEATURE_NAMES)  # features per time scale
LAG_BASE = 4  # time scale s (0, 1, ...) fits the step over LAG_BASE**s samples: 1, 4, 16, 64
SPIKE_DROP_MV = 5.0  # a fall of more than this between two samples is a spike and reset
TYPICAL_FIT = np.array([0.67, 0.0064, 0.45])  # the lag-1 fit's median magnitudes (b2 mV/nA, b1 /mV, b0 mV) on step traces
RIDGE = 1e-6  # added to the normal equations' diagonal: a trace with a flat current still solves
SPIKE_TIMES = 8  # spikes whose times `spike_features` gives one by one; later ones enter through the count, last time and mean interval


def guard_samples(dt_s: float) -> int:
    """Samples skipped after each spike: the longest refractory time the prior allows, in steps."""
    return int(math.ceil(HIGH[INDEX["t_ref"]] / dt_s))


def lags(scales: int) -> tuple[int, ...]:
    """The lags, in samples, of `scales` time scales: (1,), (1, 4), (1, 4, 16), ..."""
    return tuple(LAG_BASE**s for s in range(scales))


def feature_names(scales: int = 1) -> tuple[str, ...]:
    """The names of `leak_features`' columns: FEATURE_NAMES, then each with "@<lag>" for the longer lags."""
    return FEATURE_NAMES + tuple(f"{name}@{lag}" for lag in lags(scales)[1:] for name in FEATURE_NAMES)


def leak_features(observables_v, current_a, dt_s: float, scales: int = 1) -> np.ndarray:
    """Per trace and time scale, the least-squares fit of V_{i+k} - V_i = b0 + b1 V_i + b2 I_i over
    the windows away from spikes: (N, 4 * scales) float32 = (b2 in mV/nA, b1 per mV, b0 in mV,
    share of windows used) for lag k = 1, then the same for k = 4, 16, ... (`lags`), whose three
    coefficients are given as arcsinh(b / (k * TYPICAL_FIT)).

    observables_v (N, T) or (N, T, 1) V; current_a (N, T) A; dt_s the sampling step.
    Written by hand (a domain feature, no library has it): the Euler step of the LIF is exactly this
    linear relation at k = 1, b2 = dt / C_m, b1 = -dt g_L / C_m, b0 = dt g_L E_L / C_m, wherever the
    neuron is neither spiking nor refractory. On noise-free traces the fit recovers C_m, g_L and
    E_L to rounding; with recording noise it is biased (the regressor is noisy) but still carries the
    leak that a summary network, which must learn such a regression from examples, misses: with
    the current observed but without these features the estimator's g_L posterior stays at the
    prior (contraction 0.01: `noisy_steps` with model.leak_features = false) while the exact
    posterior is narrow.
    Over k steps the leak moves V k times as far while the noise of V_{i+k} - V_i stays the same,
    so the longer lags carry g_L through noise that drowns the one-step fit. There I_i is the
    mean current over the window, and the relation holds exactly where it is constant
    (b1 = d^k - 1, d = 1 - dt g_L / C_m) and to first order in k dt / tau elsewhere.
    A window is left out when a fall of more than SPIKE_DROP_MV lies within `guard_samples(dt_s)`
    before it or inside it."""
    v = np.asarray(observables_v, dtype=np.float64)
    v = (v[..., 0] if v.ndim == 3 else v) * 1e3  # mV
    i_na = np.asarray(current_a, dtype=np.float64) * 1e9
    spike = np.diff(v, axis=1) < -SPIKE_DROP_MV  # (N, T-1): step j goes from sample j to j+1
    c = np.concatenate([np.zeros((len(v), 1)), np.cumsum(spike, axis=1)], axis=1)  # (N, T): spikes before sample j
    guard = guard_samples(dt_s)
    return np.concatenate([_fit(v, i_na, c, guard, k) for k in lags(scales)], axis=1).astype(np.float32)


def _fit(v: np.ndarray, i_na: np.ndarray, c: np.ndarray, guard: int, k: int) -> np.ndarray:
    """`leak_features` at lag k: (N, 4) float64."""
    i = np.arange(1, v.shape[1] - k)  # windows i .. i+k, each with a sample before it
    if len(i) < 4:
        raise ValueError(f"a trace of {v.shape[1]} samples is too short for a lag of {k} samples")
    # window i is used unless a spike happened at one of the steps i - guard .. i+k-1
    use = (c[:, i + k] - c[:, np.maximum(i - guard, 0)] == 0).astype(np.float64)
    if k == 1:
        current = i_na[:, i]
    else:  # mean over the window's k samples
        s = np.concatenate([np.zeros((len(v), 1)), np.cumsum(i_na, axis=1)], axis=1)
        current = (s[:, i + k] - s[:, i]) / k
    # Instrumental variables: the regressor V_i carries the same recording noise as the target's
    # -V_i, which biases least squares towards -1 (errors in variables); V_{i-1}, whose noise
    # is independent of both, instruments it (Z'X b = Z'y), consistent for any noise level.
    ones = np.ones_like(current)
    x = np.stack([ones, v[:, i], current], axis=-1)  # (N, W, 3)
    z = np.stack([ones, v[:, i - 1], current], axis=-1)
    zw = z * use[..., None]
    a = np.einsum("nti,ntj->nij", zw, x) + RIDGE * np.eye(3)
    b = np.einsum("nti,nt->ni", zw, v[:, i + k] - v[:, i])
    coef = np.linalg.solve(a, b[..., None])[..., 0]  # (N, 3): b0, b1, b2
    fit = np.stack([coef[:, 2], coef[:, 1], coef[:, 0]], axis=1)
    if k > 1:
        # An instrumented estimate is a ratio with heavy tails (weak instruments: 0.1 % of noisy step
        # traces give |b0| > 1,000 mV at lag 16), which a standardised network input cannot take;
        # arcsinh in units of k times the fit's typical size is linear near it and logarithmic beyond.
        # Lag 1 stays raw: the models trained on it read it so.
        fit = np.arcsinh(fit / (k * TYPICAL_FIT))
    return np.concatenate([fit, use.mean(axis=1, keepdims=True)], axis=1)


def spike_feature_names() -> tuple[str, ...]:
    """The names of `spike_features`' columns."""
    return (("n_spikes", "last_spike_ms", "mean_isi_ms") + tuple(f"spike_{j + 1}_ms" for j in range(SPIKE_TIMES))
            + tuple(f"current_to_spike_{j + 1}_na" for j in range(SPIKE_TIMES)))


def spike_features(observables_v, current_a, dt_s: float) -> np.ndarray:
    """Per trace, when it spikes and under which current: (N, 3 + 2 * SPIKE_TIMES) float32 =
    (number of spikes, time of the last in ms, mean inter-spike interval in ms, the times of the
    first SPIKE_TIMES spikes in ms, the mean current in nA over the interval before each of them,
    from the window's start or the spike before). Absent spikes give 0 for their time, interval
    and current.

    observables_v (N, T) or (N, T, 1) V; current_a (N, T) A; dt_s the sampling step. A spike is a
    fall of more than SPIKE_DROP_MV from one sample to the next (as in `leak_features`); its time
    is that of the sample after the fall, the first of the reset.
    Written by hand (a domain feature, no library has it): with a known current the spike times
    pin C_m and g_L (through the charging time to threshold and the interval after each reset)
    far more tightly than a summary network that pools over time keeps them: the exact posterior
    of a noisy step trace is narrow in C_m (about 1 %), and the times are exact integers of dt."""
    v = np.asarray(observables_v, dtype=np.float64)
    v = (v[..., 0] if v.ndim == 3 else v) * 1e3  # mV
    i_na = np.asarray(current_a, dtype=np.float64) * 1e9
    n, ms = len(v), dt_s * 1e3
    charge = np.concatenate([np.zeros((n, 1)), np.cumsum(i_na, axis=1)], axis=1)  # charge[:, j]: sum of samples before j
    out = np.zeros((n, 3 + 2 * SPIKE_TIMES))
    rows, steps = np.nonzero(np.diff(v, axis=1) < -SPIKE_DROP_MV)  # row-major: each row's spikes in time order
    samples = steps + 1  # the first sample of each reset
    counts = np.bincount(rows, minlength=n)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])  # index of each row's first spike in `samples`
    rank = np.arange(len(rows)) - first[rows]  # 0 for a row's first spike, 1 for its second, ...
    start = np.where(rank > 0, np.concatenate([[0], samples[:-1]]), 0)  # the sample the interval before a spike starts at
    out[:, 0] = counts
    has = counts > 0
    last = samples[first[has] + counts[has] - 1]
    out[has, 1] = last * ms
    several = counts > 1
    out[several, 2] = (samples[first[several] + counts[several] - 1] - samples[first[several]]) * ms / (counts[several] - 1)
    keep = rank < SPIKE_TIMES
    r, k, s0, s1 = rows[keep], rank[keep], start[keep], samples[keep]
    out[r, 3 + k] = s1 * ms
    out[r, 3 + SPIKE_TIMES + k] = (charge[r, s1] - charge[r, s0]) / (s1 - s0)
    return out.astype(np.float32)


class WithFeatures:
    """A BayesFlow augmentation of a whole batch: adds "features" (N, 4 * scales; none for scales 0)
    and, with spikes, "spike_features" computed from its "observables" and "current" (after any
    noise augmentation before it)."""

    def __init__(self, dt_s: float, scales: int = 1, spikes: bool = False):
        self.dt_s, self.scales, self.spikes = float(dt_s), int(scales), bool(spikes)

    def __call__(self, batch: dict) -> dict:
        return add_features(batch, self.dt_s, self.scales, self.spikes)


def add_features(data: dict, dt_s: float, scales: int, spikes: bool) -> dict:
    """`data` ("observables", "current") plus "features" (leak fits at `scales` time scales, if any)
    and "spike_features" (if `spikes`)."""
    out = dict(data)
    if scales:
        out["features"] = leak_features(data["observables"], data["current"], dt_s, scales)
    if spikes:
        out["spike_features"] = spike_features(data["observables"], data["current"], dt_s)
    return out
