"""lif_sbi.validity: the check is calibrated on the model's own set-up and refuses traces from other settings."""

import numpy as np
import pytest

from lif_sbi import validity
from lif_sbi.priors import HIGH, LOW
from lif_sbi.simulator import simulate_batch


def test_voltage_statistics_rest_only_where_no_current_flows():
    v = np.full((2, 100), -0.07)
    v[:, 50:] = -0.05
    cur = np.zeros((2, 100))
    cur[:, 50:] = 1e-10
    s = validity.voltage_statistics(v, cur)
    np.testing.assert_allclose(s["v_rest_mV"], -70.0)
    np.testing.assert_allclose(s["v_max_mV"], -50.0)
    assert np.isnan(validity.voltage_statistics(v, None)["v_rest_mV"]).all()
    cur[1] = 1e-10  # never at rest: no resting statistic
    assert np.isnan(validity.voltage_statistics(v, cur)["v_rest_mV"][1])


def test_bound_shares_count_draws_on_either_bound():
    rng = np.random.default_rng(0)
    inside = LOW + (HIGH - LOW) * rng.uniform(0.1, 0.9, size=(1, 100, 6))
    corner = np.broadcast_to(LOW, (1, 100, 6)).copy()
    shares = validity.bound_shares(np.concatenate([inside, corner]))
    assert (shares[0] == 0).all() and (shares[1] == 1).all()


def test_judge_names_the_statistic_and_parameter():
    check = validity.Check({}, {"thresholds": {"v_max_mV": [None, -49.0], "v_rest_mV": [-82.0, -63.0],
                                               "distance": [None, 5.0], "bound_piles": [None, 1.0]}})
    stats = {"v_max_mV": np.array([-55.0, -30.0]), "v_rest_mV": np.array([-70.0, -45.0]), "distance": np.array([1.0, 9.0]),
             "bound_piles": np.array([1.0, 2.0])} | {f"bound_{p}": np.array([0.0, 0.9]) for p in ("C_m", "g_L", "E_L", "V_th", "V_res", "t_ref")}
    (ok, none), (bad, why) = validity.judge(check, stats)
    assert ok and not none and not bad and len(why) == 4
    assert "V_th" in why[0] and "E_L's prior" in why[1] and "Mahalanobis" in why[2] and "pile on a bound" in why[3] and "C_m 90%" in why[3]


@pytest.fixture(scope="module")
def posterior(noisy_steps_run):
    import lif_sbi

    return lif_sbi.load(noisy_steps_run)


def _verdicts(post, v, cur):
    draws = post.sample(v, 100, current=cur, seed=1)
    stats = validity.statistics(post.check, post.approximator, v, cur, post.dt_s, draws, observe_current=True, noise_sd_v=post.noise_sd_v)
    return np.array([ok for ok, _ in validity.judge(post.check, stats)])


@pytest.mark.torch
def test_the_run_fitted_its_check_with_a_measured_false_alarm_rate(posterior):
    rec = posterior.check.record
    n = rec["check_traces"]
    assert (posterior.run_dir / validity.FILENAME).is_file() and n == 100 and rec["fit_traces"] == 200
    # 8 limits, each the most extreme of n calibration traces: at most 8 / (n + 1) false alarms in
    # expectation; the measured rate on n fresh traces stays within a binomial margin of that
    assert rec["false_alarm_rate"] <= 8 / (n + 1) + 3 * np.sqrt(0.08 * 0.92 / n)
    assert set(rec["thresholds"]) >= {"v_max_mV", "v_min_mV", "v_rest_mV", "distance", "leak_distance", "bound_piles", "ppc_coverage"}


@pytest.mark.torch
def test_traces_from_other_settings_are_refused(posterior):
    """Different simulator settings (a cell 20 mV above the priors, a flat noisy line, ten times the
    noise, a current in pA read as nA) fail the check for (nearly) every trace."""
    cfg = posterior.config
    d = simulate_batch(40, seed=21, stimulus=cfg.stimulus, prior=cfg.prior.kind)
    v, cur = d["observables"][:, :, 0].astype(np.float64), d["current"].astype(np.float64)
    rng = np.random.default_rng(3)
    noisy = v + rng.normal(0, cfg.noise.sd_v, v.shape)
    assert _verdicts(posterior, noisy, cur).mean() >= 0.8  # the model's own set-up passes
    settings = {
        "shifted +20 mV": noisy + 0.02,
        "flat line": -0.07 + rng.normal(0, cfg.noise.sd_v, v.shape),
        "10x noise": v + rng.normal(0, 10 * cfg.noise.sd_v, v.shape),
    }
    for name, x in settings.items():
        assert _verdicts(posterior, x, cur).mean() <= 0.1, name
    assert _verdicts(posterior, noisy, cur * 1e3).mean() <= 0.1  # the current 1000x too large
