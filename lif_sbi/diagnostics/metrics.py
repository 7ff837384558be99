"""Recovery and calibration metrics of posterior draws against known truths, per parameter and in aggregate."""

from __future__ import annotations

import bayesflow as bf
import numpy as np
import scipy.stats
from bayesflow.utils.numpy_utils import credible_interval

from ..priors import N_PARAMS, PARAM_NAMES, PARAMETERS
from ._common import _check_pair, _float, _quiet_bayesflow, _seeded_global_numpy, _to_display

COVERAGE_LEVELS = (0.5, 0.9)  # central posterior intervals whose coverage is reported
SBC_QUANTILE = 0.05  # level of the log-gamma uniformity test (95 % pass criterion)

# log(5e-324), the log of the smallest subnormal double: the floor where gamma underflows to 0.
# A literal, since math.log(5e-324) fails once flush-to-zero is on (the torch backend sets it).
LOG_GAMMA_FLOOR = -744.4400719213812


def interval_coverage(theta_true, draws, level: float) -> np.ndarray:
    """Fraction of truths inside the central `level` interval of the draws, per column: (6,).

    The interval comes from BayesFlow's `credible_interval` (posterior quantiles).
    """
    lo, hi = credible_interval(draws, prob=level, axis=1)  # each (N, P)
    return np.mean((theta_true >= lo) & (theta_true <= hi), axis=0)


def coverage_tolerance(n: int, level: float, confidence: float = 0.95) -> tuple[float, float]:
    """Central binomial interval of the coverage a calibrated posterior shows on n data sets."""
    lo, hi = scipy.stats.binom.interval(confidence, n, level)
    return float(lo / n), float(hi / n)


def _sbc_log_gamma(est, truth, names, seed, num_null_draws) -> np.ndarray:
    """SBC log-gamma per parameter, (P,), floored at LOG_GAMMA_FLOOR; display-unit inputs."""
    # SBC with the log-gamma statistic of Modrák et al. (2025), as BayesFlow implements it:
    # gamma = 2 * min over the rank-ECDF of the two binomial tail probabilities (how extreme the
    # most extreme ECDF point is under uniform ranks); BayesFlow returns
    # log(gamma / q), q = the `quantile` (here 5 %) quantile of gamma's null distribution,
    # simulated by Monte Carlo under uniform ranks with the same N and S. Small gamma = evidence
    # against uniformity, so log-gamma < 0 rejects calibration at the 5 % level; we call a
    # parameter "passing" at the 95 % level when log-gamma > 0 (gamma above the null's 5 %
    # quantile). The test is per parameter, so ~5 % of calibrated parameters fail by chance.
    with _seeded_global_numpy(seed), np.errstate(divide="ignore"):
        log_gamma = bf.diagnostics.metrics.calibration_log_gamma(
            est, truth, variable_names=names, num_null_draws=num_null_draws, quantile=SBC_QUANTILE
        )["values"]
    # gamma underflows to exactly 0 for grossly miscalibrated posteriors (log = -inf); floor at
    # the log of the smallest positive double so the value stays finite and sortable.
    return np.maximum(np.asarray(log_gamma, dtype=np.float64), LOG_GAMMA_FLOOR)


def _bayesflow_columns(est, truth, names) -> dict:
    """BayesFlow's contraction, calibration error, z-scores (N, P) and range-normalised RMSE, and
    the interval coverage at each of COVERAGE_LEVELS; display-unit inputs."""
    contraction = bf.diagnostics.metrics.posterior_contraction(est, truth, variable_names=names)["values"]
    cal_err = bf.diagnostics.metrics.calibration_error(est, truth, variable_names=names)["values"]
    with np.errstate(divide="ignore", invalid="ignore"):
        z = bf.diagnostics.metrics.posterior_z_score(est, truth, variable_names=names, aggregation=None)["values"]
    # BayesFlow's RMSE: median over data sets of the per-data-set RMSE of the draws, divided by the
    # range of the truths ("range" normalisation is deterministic; "prior" bootstraps with np.random).
    # (BayesFlow logs a note about its new default normalisation whenever one is chosen; muted.)
    with _quiet_bayesflow():
        bf_nrmse = bf.diagnostics.metrics.root_mean_squared_error(
            est, truth, variable_names=names, normalize="range"
        )["values"]
    coverage = {level: interval_coverage(truth, est, level) for level in COVERAGE_LEVELS}
    return {"contraction": contraction, "cal_err": cal_err, "z": z, "bf_nrmse": bf_nrmse, "coverage": coverage}


def _per_parameter(truth, post_mean, post_sd, log_gamma, cols) -> dict:
    """{name: figures} for each parameter, plain floats and bools in display units."""
    per_param = {}
    for i, p in enumerate(PARAMETERS):
        x, y = truth[:, i], post_mean[:, i]
        if np.ptp(x) > 0 and np.ptp(y) > 0:
            r = scipy.stats.pearsonr(x, y).statistic
        else:
            r = float("nan")  # undefined for a constant estimate or truth
        # RMSE of the posterior mean (one line of NumPy; BayesFlow's RMSE, "nrmse_bf", is over draws).
        rmse = np.sqrt(np.mean((y - x) ** 2))
        prior_range = (p.high - p.low) * p.display_scale
        zi = cols["z"][:, i][np.isfinite(cols["z"][:, i])]
        per_param[p.name] = {
            "unit": p.display_unit,
            "r": _float(r),
            "rmse": _float(rmse),
            "nrmse": _float(rmse / prior_range),  # RMSE of the posterior mean / prior width
            "nrmse_bf": _float(cols["bf_nrmse"][i]),
            "posterior_sd_mean": _float(post_sd[:, i].mean()),  # display units
            "log_gamma": _float(log_gamma[i]),
            "sbc_pass": bool(log_gamma[i] > 0),
            "coverage_50": _float(cols["coverage"][0.5][i]),
            "coverage_90": _float(cols["coverage"][0.9][i]),
            "contraction": _float(cols["contraction"][i]),
            "z_mean": _float(zi.mean()) if zi.size else None,
            "z_sd": _float(zi.std(ddof=1)) if zi.size > 1 else None,
            "calibration_error": _float(cols["cal_err"][i]),
        }
    return per_param


def _aggregate(per_param: dict, n: int, s: int, num_null_draws: int) -> dict:
    """Means, extremes and SBC counts over the parameters, and the calibrated coverage ranges."""

    def agg(key, fn=np.mean):
        vals = [v[key] for v in per_param.values() if v[key] is not None]
        return _float(fn(vals)) if vals else None

    passed = [name for name, v in per_param.items() if v["sbc_pass"]]
    return {
        "n_datasets": int(n),
        "n_draws": int(s),
        "r_mean": agg("r"),
        "r_min": agg("r", np.min),
        "nrmse_mean": agg("nrmse"),
        "coverage_50_mean": agg("coverage_50"),
        "coverage_90_mean": agg("coverage_90"),
        # Range of coverage a calibrated posterior shows 95 % of the time on n data sets.
        "coverage_50_tolerance": list(coverage_tolerance(n, 0.5)),
        "coverage_90_tolerance": list(coverage_tolerance(n, 0.9)),
        "contraction_mean": agg("contraction"),
        "calibration_error_mean": agg("calibration_error"),
        "calibration_error_max": agg("calibration_error", np.max),
        "sbc_quantile": SBC_QUANTILE,
        "sbc_num_null_draws": int(num_null_draws),
        "sbc_n_pass": len(passed),
        "sbc_all_pass": len(passed) == N_PARAMS,
        "sbc_passed": passed,
    }


def compute_metrics(theta_true, draws, *, seed: int | None = 0, num_null_draws: int = 1000) -> dict:
    """Recovery and calibration metrics per parameter and in aggregate.

    theta_true: (N, 6) SI; draws: (N, S, 6) SI posterior draws for each data set.
    Returns a JSON-serialisable dict: {"parameters": {name: {...}}, "aggregate": {...}}, values
    plain floats/bools/ints (None where undefined, e.g. r of a constant estimate). `seed` fixes
    the Monte-Carlo null distribution of the SBC log-gamma test (None: global NumPy state).
    """
    theta_true, draws = _check_pair(theta_true, draws)
    truth, est = _to_display(theta_true, draws)
    n, s, _ = est.shape
    names = list(PARAM_NAMES)

    post_mean = est.mean(axis=1)  # (N, P) display units
    post_sd = est.std(axis=1, ddof=1)
    log_gamma = _sbc_log_gamma(est, truth, names, seed, num_null_draws)
    cols = _bayesflow_columns(est, truth, names)
    per_param = _per_parameter(truth, post_mean, post_sd, log_gamma, cols)
    return {"parameters": per_param, "aggregate": _aggregate(per_param, n, s, num_null_draws)}


def c2st_accuracy(draws_a, draws_b, seed: int, splits: int = 5) -> float:
    """Classifier two-sample test accuracy between two sets of draws (N, 6) SI of one posterior:
    0.5 when a classifier cannot tell them apart, 1 when it always can (sbibm's C2ST). BayesFlow's
    `classifier_two_sample_test` (an MLP, `splits`-fold cross-validation) on display units,
    seeded: it shuffles and splits with NumPy's global generator and initialises with Keras'."""
    import keras

    from ..quiet import startup_lines

    scale = np.array([p.display_scale for p in PARAMETERS])
    np.random.seed(seed)
    # Keras seeds TensorFlow too where it is installed, and its fit probes TensorFlow's tensors:
    # under another backend that first import prints TensorFlow's C++ start-up lines, filtered here
    with startup_lines():
        keras.utils.set_random_seed(seed)
        return float(bf.diagnostics.metrics.classifier_two_sample_test(
            np.asarray(draws_a) * scale, np.asarray(draws_b) * scale, cross_validation_splits=splits, patience=5, max_epochs=200))
