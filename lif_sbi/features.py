"""Leak-regression features: a least-squares fit of the membrane equation to a trace and its known current, as extra inputs of the estimator."""

from __future__ import annotations

import math

import numpy as np

from .priors import HIGH, INDEX

FEATURE_NAMES = ("dv_per_na", "dv_per_mv", "dv_offset", "fitted_share")  # see `leak_features`
N_FEATURES = len(FEATURE_NAMES)
SPIKE_DROP_MV = 5.0  # a fall of more than this between two samples is a spike and reset
RIDGE = 1e-6  # added to the normal equations' diagonal: a trace with a flat current still solves


def guard_samples(dt_s: float) -> int:
    """Samples skipped after each spike: the longest refractory time the prior allows, in steps."""
    return int(math.ceil(HIGH[INDEX["t_ref"]] / dt_s))


def leak_features(observables_v, current_a, dt_s: float) -> np.ndarray:
    """Per trace, the least-squares fit of V_i - V_{i-1} = b0 + b1 V_{i-1} + b2 I_{i-1} over the
    steps away from spikes: (N, 4) float32 = (b2 in mV/nA, b1 per mV, b0 in mV, share of steps used).

    observables_v (N, T) or (N, T, 1) V; current_a (N, T) A; dt_s the sampling step.
    Written by hand (a domain feature, no library has it): the Euler step of the LIF is exactly this
    linear relation, b2 = dt / C_m, b1 = -dt g_L / C_m, b0 = dt g_L E_L / C_m, wherever the neuron is
    neither spiking nor refractory. On noise-free traces the fit recovers C_m, g_L and E_L to
    rounding; with recording noise it is biased (the regressor is noisy) but still carries the
    leak that a summary network, which must learn such a regression from examples, misses: with
    the current observed but without these features the estimator's g_L posterior stays at the
    prior (contraction 0.00, configs/noisy_steps.toml) while the exact posterior is narrow.
    Steps within `guard_samples(dt_s)` after a fall of more than SPIKE_DROP_MV are left out."""
    v = np.asarray(observables_v, dtype=np.float64)
    v = (v[..., 0] if v.ndim == 3 else v) * 1e3  # mV
    i_na = np.asarray(current_a, dtype=np.float64) * 1e9
    dv = np.diff(v, axis=1)  # (N, T-1): step k goes from sample k to k+1
    spike = dv < -SPIKE_DROP_MV
    # step k is used unless a spike happened at one of the steps k - guard .. k
    guard = guard_samples(dt_s)
    c = np.concatenate([np.zeros((len(v), 1)), np.cumsum(spike, axis=1)], axis=1)  # (N, T)
    k = np.arange(dv.shape[1])
    recent = c[:, k + 1] - c[:, np.maximum(k - guard, 0)]
    use = (recent == 0).astype(np.float64)[:, 1:]  # steps 1 .. T-2: each has a sample before it
    # Instrumental variables: the regressor V_{i-1} carries the same recording noise as the target's
    # -V_{i-1}, which biases least squares towards -1 (errors in variables); V_{i-2}, whose noise
    # is independent of both, instruments it (Z'X b = Z'y), consistent for any noise level.
    ones = np.ones_like(dv[:, 1:])
    x = np.stack([ones, v[:, 1:-1], i_na[:, 1:-1]], axis=-1)  # (N, T-2, 3)
    z = np.stack([ones, v[:, :-2], i_na[:, 1:-1]], axis=-1)
    zw = z * use[..., None]
    a = np.einsum("nti,ntj->nij", zw, x) + RIDGE * np.eye(3)
    b = np.einsum("nti,nt->ni", zw, dv[:, 1:])
    coef = np.linalg.solve(a, b[..., None])[..., 0]  # (N, 3): b0, b1, b2
    share = use.mean(axis=1)
    return np.stack([coef[:, 2], coef[:, 1], coef[:, 0], share], axis=1).astype(np.float32)


class WithFeatures:
    """A BayesFlow augmentation of a whole batch: adds "features" (N, 4) computed from its
    "observables" and "current" (after any noise augmentation before it)."""

    def __init__(self, dt_s: float):
        self.dt_s = float(dt_s)

    def __call__(self, batch: dict) -> dict:
        return {**batch, "features": leak_features(batch["observables"], batch["current"], self.dt_s)}
