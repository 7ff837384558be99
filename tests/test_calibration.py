"""lif_sbi.calibration: width factors recovered on posteriors known to be calibrated, too wide and too narrow."""

import json

import numpy as np
import pytest

from lif_sbi import calibration, estimator
from lif_sbi.priors import DISPLAY_SCALE, HIGH, LOW, N_PARAMS, PARAMETERS


def _synthetic(width_factor, n=1500, s=400, seed=0, truth_df=None):
    """Truths drawn from 'true posteriors' N(mu, sd) (or, with truth_df, a Student-t of that many
    degrees of freedom scaled by sd: heavier tails than the draws); approximate draws N(mu, (width_factor * sd)^2).

    In display units with the plain adapter (a linear map), so coverage is the Gaussian one.
    """
    rng = np.random.default_rng(seed)
    mid, half = (LOW + HIGH) / 2 * DISPLAY_SCALE, (HIGH - LOW) / 2 * DISPLAY_SCALE
    mu = mid + 0.5 * half * rng.uniform(-1, 1, (n, N_PARAMS))
    sd = 0.02 * half * rng.uniform(0.2, 1.0, (n, N_PARAMS))  # heteroscedastic across traces
    noise = rng.standard_normal((n, N_PARAMS)) if truth_df is None else rng.standard_t(truth_df, (n, N_PARAMS))
    truth = mu + sd * noise
    draws = mu[:, None] + width_factor * sd[:, None] * rng.standard_normal((n, s, N_PARAMS))
    return draws / DISPLAY_SCALE, truth / DISPLAY_SCALE


def _middle(factors):
    """The factors (6,) at the 50 % level: a (L, 6) table's row, or the (6,) factors themselves."""
    return factors[list(calibration.LEVELS).index(0.5)] if factors.ndim == 2 else factors


def _spread(factors):
    """Ratio of the 95 %-level to the 5 %-level factor per parameter (1 for one factor)."""
    return factors[-1] / factors[0] if factors.ndim == 2 else np.ones(factors.shape)


@pytest.mark.parametrize("width_factor", [1.0, 2.3, 0.5])
def test_fit_recovers_the_factor_that_makes_coverage_nominal(width_factor):
    adapter = estimator.make_adapter(logit_bounds=False)
    draws, truth = _synthetic(width_factor)
    record = calibration.fit(adapter, draws, truth)
    factors = calibration.factors(record)
    if width_factor == 1.0:  # calibrated already: the binomial test leaves every factor at exactly 1
        assert (factors == 1.0).all() and not any(c["applied"] for c in record["validation_coverage"].values())
    else:
        np.testing.assert_allclose(_middle(factors), 1.0 / width_factor, rtol=0.08)
        assert (_spread(factors) < 1.2).all()  # Gaussian errors: (nearly) one factor for every level
        assert all(c["applied"] and c["p_value_90"] < calibration.ALPHA for c in record["validation_coverage"].values())
    for name, c in record["validation_coverage"].items():
        assert abs(c["after_90"] - 0.90) < 0.03 and abs(c["after_50"] - 0.50) < 0.04, (name, c)
        if width_factor > 1:  # too wide: intervals over-cover before
            assert c["before_90"] > 0.97 and c["before_50"] > 0.65, (name, c)
        if width_factor < 1:  # too narrow: under-cover before
            assert c["before_90"] < 0.70 and c["before_50"] < 0.35, (name, c)
    # fresh draws of the same kind, rescaled by the fitted factors, are calibrated too
    new_draws, new_truth = _synthetic(width_factor, seed=1)
    scaled, _ = calibration.rescale(adapter, new_draws, factors)
    u, ut = calibration.to_unbounded(adapter, scaled), calibration.to_unbounded(adapter, new_truth)
    cov = calibration.coverage_curves(u, ut)[0]  # (levels, 6)
    assert np.abs(cov - calibration.LEVELS[:, None]).max() < 0.05


def test_only_the_miscalibrated_parameters_are_rescaled():
    adapter = estimator.make_adapter(logit_bounds=False)
    width = np.array([1.0, 1.0, 2.3, 1.0, 1.4, 1.0])  # E_L much too wide, V_res somewhat
    # seed 5: at ALPHA = 1 % a calibrated parameter is flagged by chance 1 time in 100 (seed 4 flags C_m, 0.921)
    draws, truth = _synthetic(width, seed=5)
    record = calibration.fit(adapter, draws, truth)
    applied = [record["validation_coverage"][p.name]["applied"] for p in PARAMETERS]
    assert applied == [False, False, True, False, True, False]
    factors = calibration.factors(record)
    np.testing.assert_allclose(_middle(factors)[[2, 4]], 1 / width[[2, 4]], rtol=0.08)
    assert (factors[..., [0, 1, 3, 5]] == 1.0).all()


def test_rescale_in_logit_coordinates_stays_inside_the_widened_bounds_and_keeps_the_median():
    adapter = estimator.make_adapter(logit_bounds=True)
    rng = np.random.default_rng(3)
    center = LOW + (HIGH - LOW) * rng.uniform(0.05, 0.95, (20, 1, N_PARAMS))
    draws = np.clip(center + 0.05 * (HIGH - LOW) * rng.standard_normal((20, 301, N_PARAMS)), LOW, HIGH)
    margin = estimator.BOUND_MARGIN * (HIGH - LOW)
    by_level = np.geomspace(0.5, 2.0, len(calibration.LEVELS))[:, None] * np.ones(N_PARAMS)
    for scale in (np.full(N_PARAMS, 0.3), np.full(N_PARAMS, 3.0), np.full(N_PARAMS, 20.0), by_level):
        out, state = calibration.rescale(adapter, draws, scale)
        assert np.isfinite(out).all()
        assert ((out >= LOW - margin * 1.001) & (out <= HIGH + margin * 1.001)).all()
        assert (np.abs(np.median(out, axis=1) - np.median(draws, axis=1)) <= 1e-5 * (HIGH - LOW)).all()  # odd count: a draw
        # every trace's draws keep their order (up to float32 rounding in the adapter's round trip)
        in_order = np.take_along_axis(out, np.argsort(draws, axis=1), axis=1)
        assert (np.diff(in_order, axis=1) >= -1e-6 * (HIGH - LOW)).all()
        # the same medians (and levels) are reused for more draws of the same traces
        again, state2 = calibration.rescale(adapter, draws[:5, :10], scale, calibration.subset(state, slice(0, 5)))
        np.testing.assert_allclose(again, out[:5, :10], rtol=1e-6, atol=0)


def test_heavy_tailed_errors_get_wider_outer_intervals():
    """Errors heavier-tailed than the draws (Student-t, 4 degrees of freedom, vs Gaussian draws): one
    factor for every level cannot be right at 50 % and 90 % at once; factors growing with the level can."""
    adapter = estimator.make_adapter(logit_bounds=False)
    draws, truth = _synthetic(1.0, truth_df=4, n=3000)
    one = calibration.fit(adapter, draws, truth, tail_dfs=(np.inf,))
    by_level = calibration.fit(adapter, draws, truth)
    for name in (p.name for p in PARAMETERS):
        c1, c2 = one["validation_coverage"][name], by_level["validation_coverage"][name]
        assert c1["applied"] and c2["applied"], (name, c1)
        # one factor: the 90 % intervals still under-cover (it compromises across levels)
        assert c1["after_90"] < 0.88, (name, c1)
        # by level: within 0.02 of nominal at every level, with factors growing from the 5 % to the 95 % level
        assert c2["after_max_error"] < 0.02 and abs(c2["after_90"] - 0.90) < 0.015, (name, c2)
        col = by_level["width_scale"][name]
        assert isinstance(col, list) and col[-1] > 1.15 * col[0] and np.all(np.diff(col) >= 0), (name, col)
    # fresh draws of the same kind, rescaled by the fitted factors, are calibrated at every level
    new_draws, new_truth = _synthetic(1.0, truth_df=4, n=3000, seed=1)
    scaled, _ = calibration.rescale(adapter, new_draws, calibration.factors(by_level))
    u, ut = calibration.to_unbounded(adapter, scaled), calibration.to_unbounded(adapter, new_truth)
    cov = calibration.coverage_curves(u, ut)[0]  # (levels, 6)
    assert np.abs(cov - calibration.LEVELS[:, None]).max() < 0.035
    assert calibration.factors(by_level).shape == (len(calibration.LEVELS), N_PARAMS)
    assert calibration.describe(by_level["width_scale"]["E_L"]).count("–") == 1


def test_a_draw_on_the_widened_bound_maps_to_a_finite_coordinate():
    adapter = estimator.make_adapter(logit_bounds=True)
    margin = estimator.BOUND_MARGIN * (HIGH - LOW)
    on_bound = np.stack([LOW - margin, HIGH + margin])
    u = calibration.to_unbounded(adapter, on_bound)
    assert np.isfinite(u).all() and np.abs(u).max() <= calibration.U_MAX


def test_load_for_reads_the_run_folders_record(tmp_path):
    assert calibration.load_for(tmp_path / "model.keras") is None
    record = {"width_scale": {p.name: 0.5 + i / 10 for i, p in enumerate(PARAMETERS)}}
    (tmp_path / calibration.FILENAME).write_text(json.dumps(record))
    np.testing.assert_allclose(calibration.load_for(tmp_path / "model.keras"), 0.5 + np.arange(6) / 10)
    # a parameter with factors by level makes the whole table (levels, 6); one-number entries repeat
    record["width_scale"]["E_L"] = list(np.linspace(0.4, 0.6, len(calibration.LEVELS)))
    (tmp_path / calibration.FILENAME).write_text(json.dumps(record))
    table = calibration.load_for(tmp_path / "model.keras")
    assert table.shape == (len(calibration.LEVELS), N_PARAMS)
    np.testing.assert_allclose(table[:, 2], np.linspace(0.4, 0.6, len(calibration.LEVELS)))
    np.testing.assert_allclose(table[:, 0], 0.5)
    assert calibration.describe(0.5) == "×0.50" and calibration.describe(table[:, 2]) == "×0.40–0.60"


@pytest.mark.torch
def test_sample_posterior_applies_the_factors():
    from lif_sbi.config import ModelConfig
    from lif_sbi.simulator import simulate_batch

    approximator = estimator.build_approximator(ModelConfig(summary_network="conv_pool", flow_depth=2))
    data = simulate_batch(6, seed=5)
    approximator.build_from_data(approximator.adapter({"parameters": data["parameters"], "observables": data["observables"]}))
    plain = estimator.sample_posterior(approximator, data["observables"], 400, seed=1, within_prior=False)
    same = estimator.sample_posterior(approximator, data["observables"], 400, seed=1, within_prior=False, width_scale=np.ones(6))
    np.testing.assert_allclose(same, plain, rtol=1e-5, atol=1e-5 * np.abs(HIGH - LOW).max())
    half = estimator.sample_posterior(approximator, data["observables"], 400, seed=1, within_prior=False, width_scale=np.full(6, 0.5))
    iqr = lambda d: np.subtract(*np.quantile(calibration.to_unbounded(approximator.adapter, d), [0.75, 0.25], axis=1))  # noqa: E731
    np.testing.assert_allclose(iqr(half), 0.5 * iqr(plain), rtol=1e-3)
    # within the prior (rejection rounds included) the draws are valid and narrower
    confined = estimator.sample_posterior(approximator, data["observables"], 400, seed=1, width_scale=np.full(6, 0.5))
    assert confined.shape == (6, 400, 6) and np.isfinite(confined).all()


def test_levels_of_is_the_central_level_among_the_reference_draws():
    """A draw's level is |2F - 1| with F its mid-rank empirical CDF among the trace's sorted draws."""
    ref = np.sort(np.arange(1.0, 101.0).reshape(1, 100, 1).repeat(N_PARAMS, axis=2), axis=1)  # 1..100
    u = np.array([50.5, 1.0, 100.0, 0.0, 1e9, 50.0]).reshape(1, 6, 1).repeat(N_PARAMS, axis=2)
    lev = calibration.levels_of(u, ref)[0, :, 0]
    # 50.5 sits between the 50th and 51st draw (F = 0.5): level 0; 1 and 100 are the extreme draws
    # (mid-rank F = 0.005 and 0.995): level 0.99; below or above all draws: level 1
    np.testing.assert_allclose(lev, [0.0, 0.99, 0.99, 1.0, 1.0, 0.01])
    # with one factor per level everywhere equal, warp is the plain rescaling about the median
    center = np.full((1, N_PARAMS), 50.5)
    flat = np.full((len(calibration.LEVELS), N_PARAMS), 0.7)
    np.testing.assert_allclose(calibration.warp(u, flat, center, ref), calibration.warp(u, np.full(N_PARAMS, 0.7), center, None))
