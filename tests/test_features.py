"""Hand-made features: leak fits exact on noise-free traces, unbiased under noise, spikes left out, longer lags through noise; spike times exact and robust to noise."""

from __future__ import annotations

import numpy as np
import pytest

from lif_sbi import noise
from lif_sbi.config import ConfigError, StimulusConfig, load_config
from scipy.stats import spearmanr

from lif_sbi.features import (N_FEATURES, SPIKE_TIMES, TYPICAL_FIT, WithFeatures, feature_names, guard_samples, lags, leak_features,
                              spike_feature_names, spike_features)
from lif_sbi.priors import INDEX
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
    batch = WithFeatures(DT, scales=2)({"observables": d["observables"], "current": d["current"]})
    assert batch["features"].shape == (5, 2 * N_FEATURES)


def _leak_rate(f: np.ndarray, scale: int) -> np.ndarray:
    """dt g_L / C_m per trace from the fit at time scale `scale`: b1 = d^k - 1 with d = 1 - dt g_L / C_m."""
    k = lags(scale + 1)[-1]
    b1 = np.sinh(f[:, N_FEATURES * scale + 1]) * k * TYPICAL_FIT[1]  # the longer lags' coefficients come as arcsinh
    return 1 - (1 + b1) ** (1 / k)


def test_longer_lags_add_columns_and_keep_the_one_sample_fit():
    """scales=3: (N, 12) named columns, the first four those of scales=1 bit for bit; lags 1, 4, 16."""
    d = simulate_batch(50, seed=6, stimulus=STEPS, prior="ordered")
    noisy = noise.add_noise(d["observables"], 0.5e-3, seed=7)
    one, three = leak_features(noisy, d["current"], DT), leak_features(noisy, d["current"], DT, scales=3)
    assert three.shape == (50, 3 * N_FEATURES) and np.isfinite(three).all()
    np.testing.assert_array_equal(three[:, :N_FEATURES], one)
    assert lags(3) == (1, 4, 16) and len(feature_names(3)) == 12 and feature_names(3)[4] == "dv_per_na@4"


def test_longer_lags_give_the_leak_rate_on_noise_free_steps():
    """On noise-free step traces the lag-4 and lag-16 fits give dt g_L / C_m within 0.5 % and 2 % (median);
    measured 0.17 % and 0.9 % (the window's mean current stands in for the current across a step's edge)."""
    d = simulate_batch(300, seed=1, stimulus=STEPS, prior="ordered", dtype=__import__("torch").float64)
    f = leak_features(d["observables"], d["current"], DT, scales=3).astype(np.float64)
    rate = DT * d["parameters"][:, 1] / d["parameters"][:, 0]
    for scale, tolerance in ((1, 5e-3), (2, 2e-2)):
        assert np.median(np.abs(_leak_rate(f, scale) / rate - 1)) < tolerance


def test_longer_lags_carry_the_leak_through_recording_noise():
    """With 0.5 mV noise on 2,000 step traces the fitted b1 ranks g_L / C_m far better at lag 16 than
    at lag 1 (Spearman 0.69 against 0.30 measured; required: at least 0.25 more)."""
    d = simulate_batch(2000, seed=2, stimulus=STEPS, prior="ordered")
    noisy = noise.add_noise(d["observables"], 0.5e-3, seed=3)
    f = leak_features(noisy, d["current"], DT, scales=3).astype(np.float64)
    rate = d["parameters"][:, 1] / d["parameters"][:, 0]
    rho = [spearmanr(f[:, N_FEATURES * s + 1], -rate).correlation for s in range(3)]
    assert rho[2] > rho[0] + 0.25 and rho[1] > rho[0]


@pytest.mark.parametrize("setting", ["model.leak_scales=2", "model.leak_scales=5", "model.leak_scales=true"])
def test_leak_scales_needs_leak_features_and_a_count_in_range(setting):
    extra = [] if setting == "model.leak_scales=2" else ["model.observe_current=true", "model.leak_features=true"]
    with pytest.raises(ConfigError, match="model.leak_scales (.*an integer in 1..4|.*wrong type: expected int)"):
        load_config("ci", extra + [setting])


def _spike_features_one_by_one(v: np.ndarray, v_res: float, current: np.ndarray, dt: float) -> np.ndarray:
    """spike_features of one noise-free float64 trace, from the simulator's own rule rather than
    a fall in V: a spike's first sample is the first of a run at V_res (to the float32 rounding of
    the returned parameters)."""
    at_reset = np.abs(v - v_res) < 1e-8
    spikes = [j for j in range(1, len(v)) if at_reset[j] and not at_reset[j - 1]]
    out = np.zeros(3 + 2 * SPIKE_TIMES)
    out[0] = len(spikes)
    if spikes:
        out[1] = spikes[-1] * dt * 1e3
    if len(spikes) > 1:
        out[2] = np.mean(np.diff(spikes)) * dt * 1e3
    start = 0
    for k, j in enumerate(spikes[:SPIKE_TIMES]):
        out[3 + k] = j * dt * 1e3
        out[3 + SPIKE_TIMES + k] = current[start:j].mean() * 1e9
        start = j
    return out


def test_spike_features_match_the_simulators_resets_trace_by_trace_and_survive_noise():
    """On 300 noise-free float64 step traces the batched features equal a trace-by-trace count of the
    simulator's resets (times exact, currents to float32 rounding); with 0.5 mV of recording
    noise they are the same for at least 99 % of traces."""
    import torch

    d = simulate_batch(300, seed=11, stimulus=STEPS, prior="ordered", dtype=torch.float64)
    v, cur, theta = np.asarray(d["observables"])[..., 0], np.asarray(d["current"]), d["parameters"]
    f = spike_features(d["observables"], cur, DT)
    assert f.shape == (300, len(spike_feature_names())) == (300, 3 + 2 * SPIKE_TIMES)
    expected = np.stack([_spike_features_one_by_one(v[i], theta[i, INDEX["V_res"]], cur[i], DT) for i in range(300)])
    assert expected[:, 0].max() > SPIKE_TIMES and (expected[:, 0] == 1).any()  # both ends exercised
    np.testing.assert_allclose(f, expected, rtol=1e-6, atol=1e-6)
    noisy = noise.add_noise(d["observables"], 0.5e-3, seed=3)
    same = np.all(np.isclose(spike_features(noisy, cur, DT), f, rtol=1e-6, atol=1e-6), axis=1)
    assert same.mean() >= 0.99
    assert not spike_features(np.full((2, 501), -0.07), cur[:2], DT).any()  # no spike: all zero


def test_spike_features_need_the_current_and_join_the_leak_fits_in_a_batch():
    d = simulate_batch(5, seed=4, stimulus=STEPS)
    batch = WithFeatures(DT, scales=0, spikes=True)({"observables": d["observables"], "current": d["current"]})
    assert "features" not in batch and batch["spike_features"].shape == (5, 3 + 2 * SPIKE_TIMES)
    both = WithFeatures(DT, scales=2, spikes=True)({"observables": d["observables"], "current": d["current"]})
    assert both["features"].shape == (5, 2 * N_FEATURES)
    np.testing.assert_array_equal(both["spike_features"], batch["spike_features"])
    with pytest.raises(ConfigError, match="model.spike_features .*only with model.observe_current = true"):
        load_config("ci", ["model.spike_features=true"])
