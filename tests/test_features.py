"""Leak-regression features: exact on noise-free traces, unbiased under noise, spikes left out."""

from __future__ import annotations

import numpy as np
import pytest

from lif_sbi import noise
from lif_sbi.config import ConfigError, StimulusConfig, load_config
from lif_sbi.features import N_FEATURES, WithFeatures, guard_samples, leak_features
from lif_sbi.simulator import simulate_batch

DT = 1e-4
STEPS = StimulusConfig(protocols=("step",), onset_low_s=0.005, onset_high_s=0.015, width_low_s=0.02, width_high_s=0.035)


def _membrane(f: np.ndarray, dt: float = DT):
    """(C_m in F, g_L in S, E_L in V) from the fitted coefficients (b2 mV/nA, b1 /mV, b0 mV)."""
    c = dt / (f[:, 0] * 1e-3 / 1e-9)
    g = -f[:, 1] * c / dt
    e = -f[:, 2] / f[:, 1] * 1e-3
    return c, g, e


@pytest.mark.parametrize("stimulus", [None, STEPS], ids=["coloured", "step"])
def test_noise_free_traces_give_the_membrane_constants_to_rounding(stimulus):
    """On noise-free traces the fit returns C_m, g_L and E_L (median relative error < 1e-4, every trace < 1 %)."""
    d = simulate_batch(300, seed=1, stimulus=stimulus, prior="ordered", dtype=__import__("torch").float64)
    f = leak_features(d["observables"], d["current"], DT)
    assert f.shape == (300, N_FEATURES) and np.isfinite(f).all()
    c, g, e = _membrane(f.astype(np.float64))
    theta = d["parameters"]
    assert (f[:, 3] > 0).all()  # the rise before the first spike is always fitted
    fitted = f[:, 3] > 0.05  # traces with at least 25 steps away from spikes (fast-spiking coloured traces have fewer)
    assert fitted.mean() > 0.3
    for est, true in ((c, theta[:, 0]), (g, theta[:, 1]), (e, theta[:, 2])):
        assert np.median(np.abs(est[fitted] / true[fitted] - 1)) < 1e-4 and np.max(np.abs(est[fitted] / true[fitted] - 1)) < 1e-2


def test_with_noise_the_instrumented_fit_is_unbiased_for_the_capacitance():
    """With 0.5 mV recording noise the median C_m estimate over 2,000 traces lies within 3 % of the truth (least squares would be biased)."""
    d = simulate_batch(2000, seed=2, stimulus=STEPS, prior="ordered")
    noisy = noise.add_noise(d["observables"], 0.5e-3, seed=3)
    c, _, _ = _membrane(leak_features(noisy, d["current"], DT).astype(np.float64))
    assert abs(np.median(c / d["parameters"][:, 0]) - 1) < 0.03


def test_steps_after_a_spike_are_left_out_and_a_flat_current_still_solves():
    """The used share drops by the guard after each spike; a trace at rest with no current gives finite features."""
    t = 501
    v = np.full((2, t), -70e-3)
    v[0, 100:] = -55e-3  # one "spike and reset" fall pattern: up, then a fall of 15 mV at step 200
    v[0, 200:] = -70e-3
    cur = np.zeros((2, t))
    f = leak_features(v, cur, DT)
    assert np.isfinite(f).all()
    guard = guard_samples(DT)
    assert guard == 50
    assert f[1, 3] == 1.0 and f[0, 3] == pytest.approx((t - 2 - (guard + 1)) / (t - 2))


def test_with_features_adds_them_to_a_batch_and_config_requires_the_current():
    """WithFeatures adds (N, 4) "features" to a batch; model.leak_features without observe_current is a ConfigError."""
    d = simulate_batch(5, seed=4, stimulus=STEPS)
    batch = WithFeatures(DT)({"observables": d["observables"], "current": d["current"]})
    assert batch["features"].shape == (5, N_FEATURES) and batch["observables"] is d["observables"]
    with pytest.raises(ConfigError, match="model.leak_features .*only with model.observe_current = true"):
        load_config("ci", ["model.leak_features=true"])
