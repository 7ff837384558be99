"""Recovery and calibration diagnostics of a trained posterior estimator: metrics and figures.

Everything here takes plain NumPy arrays in SI units, columns in `lif_sbi.priors.PARAM_NAMES`
order, and converts to display units (pF, nS, mV, ms) for tables and figures with the scales
declared in `lif_sbi.priors`. BayesFlow's diagnostics do the work wherever one exists
(`bf.diagnostics.metrics.*`, `bf.diagnostics.plots.*`); what is written by hand here says so.

Main entry points: `compute_metrics`, the `plot_*` functions (one PNG each, path returned),
`posterior_predictive`, and `run_all`, which the training command calls with arrays.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import types
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are only ever written to files

import bayesflow as bf  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import scipy.stats  # noqa: E402
from bayesflow.utils.numpy_utils import credible_interval  # noqa: E402

from .priors import DISPLAY_SCALE, HIGH, INDEX, LOW, N_PARAMS, PARAM_NAMES, PARAMETERS  # noqa: E402
from .stimulus import TIME_S  # noqa: E402

DPI = 100
COVERAGE_LEVELS = (0.5, 0.9)  # central posterior intervals whose coverage is reported
SBC_QUANTILE = 0.05  # level of the log-gamma uniformity test (95 % pass criterion)
PPC_LEVEL = 0.9  # central posterior-predictive band

# Voltage traces and time axes use the display units of the parameters that share their SI unit
# (V -> mV like E_L, s -> ms like t_ref), so no unit or scale is retyped here.
_VOLT = PARAMETERS[INDEX["E_L"]]
_TIME = PARAMETERS[INDEX["t_ref"]]

PLOT_FILES = {
    "loss": "loss.png",
    "recovery": "recovery.png",
    "sbc_ecdf": "sbc_ecdf.png",
    "z_score_contraction": "z_score_contraction.png",
    "coverage": "coverage.png",
    "coverage_curve": "coverage_curve.png",
    "prior_histograms": "prior_histograms.png",
    "example_traces": "example_traces.png",
    "posterior_predictive": "posterior_predictive.png",
}


# ----------------------------------------------------------------------------- helpers


# log(5e-324), the log of the smallest subnormal double: the floor where gamma underflows to 0.
# A literal, since math.log(5e-324) fails once flush-to-zero is on (the torch backend sets it).
LOG_GAMMA_FLOOR = -744.4400719213812


def _label(i: int) -> str:
    """'C_m [pF]': the parameter's name with its display unit, for titles and table heads."""
    p = PARAMETERS[i]
    return f"{p.name} [{p.display_unit}]"


def _check_pair(theta_true, draws) -> tuple[np.ndarray, np.ndarray]:
    theta_true = np.asarray(theta_true, dtype=np.float64)
    draws = np.asarray(draws, dtype=np.float64)
    if theta_true.ndim != 2 or theta_true.shape[1] != N_PARAMS:
        raise ValueError(f"theta_true must have shape (N, {N_PARAMS}) in SI units; got {theta_true.shape}")
    if draws.ndim != 3 or draws.shape[0] != theta_true.shape[0] or draws.shape[2] != N_PARAMS:
        raise ValueError(
            f"draws must have shape (N, S, {N_PARAMS}) = ({theta_true.shape[0]}, S, {N_PARAMS}) in SI units; "
            f"got {draws.shape}"
        )
    if theta_true.shape[0] < 2 or draws.shape[1] < 2:
        raise ValueError(f"need at least 2 data sets and 2 draws each; got N={draws.shape[0]}, S={draws.shape[1]}")
    if not (np.isfinite(theta_true).all() and np.isfinite(draws).all()):
        raise ValueError("theta_true and draws must be finite (no NaN or inf)")
    return theta_true, draws


def _to_display(theta_true, draws):
    return theta_true * DISPLAY_SCALE, draws * DISPLAY_SCALE


@contextlib.contextmanager
def _seeded_global_numpy(seed: int | None):
    """Seed NumPy's global RNG for the block and restore its state afterwards.

    BayesFlow's log-gamma null distribution and ECDF bands draw from `np.random` directly;
    this makes them reproducible without disturbing anybody else's random stream.
    """
    if seed is None:
        yield
        return
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


@contextlib.contextmanager
def _quiet_bayesflow():
    """Raise the 'bayesflow' logger to ERROR for the block (informational warnings only)."""
    logger = logging.getLogger("bayesflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _float(x) -> float | None:
    """A plain Python float, or None where the value is undefined (NaN/inf), for strict JSON."""
    x = float(x)
    return x if math.isfinite(x) else None


def _atomic_write(path: Path, write) -> Path:
    """Call write(tmp_path) on a temporary file beside `path`, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; returns the path."""

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return _atomic_write(Path(path), write)


def _save(fig: plt.Figure, path) -> Path:
    """Save `fig` as PNG atomically, close it, return the path."""
    try:
        return _atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    finally:
        plt.close(fig)


# ----------------------------------------------------------------------------- metrics


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
    log_gamma = np.maximum(np.asarray(log_gamma, dtype=np.float64), LOG_GAMMA_FLOOR)

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

    per_param = {}
    for i, p in enumerate(PARAMETERS):
        x, y = truth[:, i], post_mean[:, i]
        if np.ptp(x) > 0 and np.ptp(y) > 0:
            r = scipy.stats.pearsonr(x, y).statistic
        else:
            r = float("nan")  # undefined for a constant estimate or truth
        # RMSE of the posterior mean (one line of NumPy; BayesFlow's RMSE is over draws, below).
        rmse = np.sqrt(np.mean((y - x) ** 2))
        prior_range = (p.high - p.low) * p.display_scale
        zi = z[:, i][np.isfinite(z[:, i])]
        per_param[p.name] = {
            "unit": p.display_unit,
            "r": _float(r),
            "rmse": _float(rmse),
            "nrmse": _float(rmse / prior_range),  # RMSE of the posterior mean / prior width
            "nrmse_bf": _float(bf_nrmse[i]),
            "posterior_sd_mean": _float(post_sd[:, i].mean()),  # display units
            "log_gamma": _float(log_gamma[i]),
            "sbc_pass": bool(log_gamma[i] > 0),
            "coverage_50": _float(coverage[0.5][i]),
            "coverage_90": _float(coverage[0.9][i]),
            "contraction": _float(contraction[i]),
            "z_mean": _float(zi.mean()) if zi.size else None,
            "z_sd": _float(zi.std(ddof=1)) if zi.size > 1 else None,
            "calibration_error": _float(cal_err[i]),
        }

    def agg(key, fn=np.mean):
        vals = [v[key] for v in per_param.values() if v[key] is not None]
        return _float(fn(vals)) if vals else None

    passed = [name for name, v in per_param.items() if v["sbc_pass"]]
    aggregate = {
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
    return {"parameters": per_param, "aggregate": aggregate}


# ----------------------------------------------------------------------------- plots


def plot_loss(history: Mapping[str, Sequence[float]], path) -> Path:
    """Training (and validation, if `val_loss` is present) loss per epoch, BayesFlow's `loss` plot.

    history: a Keras History's `.history` dict (keys "loss", optionally "val_loss", ...).
    """
    history = dict(history or {})
    if not history.get("loss"):
        raise ValueError(f"history needs a non-empty 'loss' list; got keys {sorted(history)}")
    clean = {k: [float(v) for v in history[k]] for k in ("loss", "val_loss") if history.get(k)}
    # bf.diagnostics.plots.loss reads `.history` of a keras History; a namespace carries the dict.
    with warnings.catch_warnings():
        # one epoch gives it identical x-limits; matplotlib widens them itself, after a warning
        warnings.filterwarnings("ignore", message="Attempting to set identical low and high xlims")
        fig = bf.diagnostics.plots.loss(types.SimpleNamespace(history=clean), figsize=(8, 3.5))
    return _save(fig, path)


# Layout shared by the 2 x 3 per-parameter panels of BayesFlow's plots.
_GRID = {"num_row": 2, "num_col": 3, "label_fontsize": 11, "title_fontsize": 12, "tick_fontsize": 9}


def _interval_around_mean(x, axis=1, prob=0.9):
    """Central `prob` interval of x along `axis`, widened to contain the mean: (2, N, P).

    Written by hand: BayesFlow's recovery plot draws mean - lower and upper - mean as error
    bars, and Matplotlib rejects a negative bar where a skewed or near-point posterior puts its
    mean outside the central interval (E_L and V_res do).
    """
    lo, hi = np.quantile(x, [(1 - prob) / 2, (1 + prob) / 2], axis=axis)
    mean = np.mean(x, axis=axis)
    return np.stack([np.minimum(lo, mean), np.maximum(hi, mean)])


def plot_recovery(theta_true, draws, path) -> Path:
    """Posterior mean (with 90 % central interval) vs truth per parameter, display units, r shown.

    BayesFlow's `recovery` plot with the mean as point estimate, so its r is Pearson r of the
    posterior mean vs truth, the value `compute_metrics` reports.
    """
    theta_true, draws = _check_pair(theta_true, draws)
    truth, est = _to_display(theta_true, draws)
    fig = bf.diagnostics.plots.recovery(
        est,
        truth,
        variable_names=[_label(i) for i in range(N_PARAMS)],
        point_agg=np.mean,
        uncertainty_agg=_interval_around_mean,
        uncertainty_agg_kwargs={"prob": 0.9},
        figsize=(12, 7.5),
        markersize=2,
        elinewidth=0.4,
        metric_fontsize=11,
        **_GRID,
    )
    return _save(fig, path)


def plot_sbc_ecdf(theta_true, draws, path, *, seed: int | None = 0, log_gamma: Mapping | None = None) -> Path:
    """SBC rank-ECDF difference with 95 % simultaneous bands, BayesFlow's `calibration_ecdf`.

    log_gamma: optional {name: value} shown in the panel titles (e.g. from `compute_metrics`).
    """
    theta_true, draws = _check_pair(theta_true, draws)
    truth, est = _to_display(theta_true, draws)
    names = list(PARAM_NAMES)
    if log_gamma:
        def title(name):
            lg = log_gamma.get(name)
            if lg is None:
                return name
            return f"{name} (log γ < −700)" if lg < -700 else f"{name} (log γ = {lg:.2f})"  # see the floor above

        names = [title(n) for n in names]
    with _seeded_global_numpy(seed):
        fig = bf.diagnostics.plots.calibration_ecdf(
            est,
            truth,
            variable_names=names,
            difference=True,
            figsize=(12, 7),
            legend_fontsize=9,
            **_GRID,
            ecdf_bands_kwargs={"confidence": 0.95},
        )
    return _save(fig, path)


def plot_z_score_contraction(theta_true, draws, path) -> Path:
    """Posterior z-score vs posterior contraction per data set, BayesFlow's `z_score_contraction`."""
    theta_true, draws = _check_pair(theta_true, draws)
    truth, est = _to_display(theta_true, draws)
    with np.errstate(divide="ignore", invalid="ignore"):
        fig = bf.diagnostics.plots.z_score_contraction(
            est,
            truth,
            variable_names=list(PARAM_NAMES),
            figsize=(12, 7),
            markersize=6,
            **_GRID,
        )
    return _save(fig, path)


def plot_coverage_curve(theta_true, draws, path, *, max_draws: int = 100) -> Path:
    """Empirical coverage of every central interval width, BayesFlow's `coverage` plot.

    BayesFlow evaluates one width per draw (S + 2 widths) and re-sorts all draws for each, which
    is quadratic in S (about a minute for S = 1000); the draws are i.i.d., so the first
    `max_draws` of them give the same curve at a resolution of 1 / (max_draws + 1).
    """
    theta_true, draws = _check_pair(theta_true, draws)
    truth, est = _to_display(theta_true, draws[:, :max_draws])
    fig = bf.diagnostics.plots.coverage(
        est,
        truth,
        variable_names=list(PARAM_NAMES),
        difference=True,
        figsize=(12, 7),
        num_row=2,
        num_col=3,
        label_fontsize=11,
        legend_fontsize=9,
        title_fontsize=12,
        tick_fontsize=9,
    )
    return _save(fig, path)


def plot_coverage(theta_true, draws, path) -> Path:
    """Coverage of the central 50 % and 90 % intervals per parameter, as bars with nominal lines.

    Hand-written: BayesFlow's `coverage` plot draws the whole curve per parameter
    (`plot_coverage_curve`); this is the compact per-parameter summary at the two levels the
    report's table lists, with the binomial range a calibrated posterior would show.
    """
    theta_true, draws = _check_pair(theta_true, draws)
    n = theta_true.shape[0]
    x = np.arange(N_PARAMS)
    width = 0.38
    fig, ax = plt.subplots(figsize=(8, 4))
    colors = ("#7a9cd6", "#132a70")
    for k, (level, color) in enumerate(zip(COVERAGE_LEVELS, colors)):
        cov = interval_coverage(theta_true, draws, level)
        xs = x + (k - 0.5) * width
        ax.bar(xs, cov, width, color=color, label=f"{level:.0%} interval")
        lo, hi = coverage_tolerance(n, level)
        ax.axhline(level, color=color, ls="--", lw=1)
        ax.axhspan(lo, hi, color=color, alpha=0.12, lw=0)
        for xi, c in zip(xs, cov):
            ax.text(xi, c + 0.01, f"{c:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, list(PARAM_NAMES))
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("Empirical coverage")
    ax.set_title(f"Central-interval coverage on {n} data sets (dashed: nominal; shaded: 95 % binomial range)", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_prior_histograms(theta_prior, path, *, bins: int = 40) -> Path:
    """Histogram of each parameter's prior draws in display units, with the prior bounds.

    Hand-written (Matplotlib): BayesFlow has no single-array histogram grid.
    """
    theta_prior = np.asarray(theta_prior, dtype=np.float64)
    if theta_prior.ndim != 2 or theta_prior.shape[1] != N_PARAMS:
        raise ValueError(f"theta_prior must have shape (M, {N_PARAMS}) in SI units; got {theta_prior.shape}")
    fig, axes = plt.subplots(2, 3, figsize=(11, 6))
    for i, (p, ax) in enumerate(zip(PARAMETERS, axes.flat)):
        ax.hist(p.to_display(theta_prior[:, i]), bins=bins, color="#132a70", alpha=0.8)
        for b in (p.low, p.high):
            ax.axvline(p.to_display(b), color="grey", ls="--", lw=1)
        ax.set_title(f"{p.name} ({p.meaning})", fontsize=10)
        ax.set_xlabel(p.display_unit)
    fig.suptitle(f"Prior draws (n = {theta_prior.shape[0]}); dashed: prior bounds", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def _traces_2d(traces) -> np.ndarray:
    traces = np.asarray(traces, dtype=np.float64)
    if traces.ndim == 3 and traces.shape[2] == 1:
        traces = traces[:, :, 0]
    return traces


def plot_example_traces(theta, traces, path) -> Path:
    """For each parameter, the traces of the draws with its min, median and max value.

    theta: (M, 6) SI; traces: (M, 501) or (M, 501, 1) in V. Drawn in mV vs ms.
    Hand-written (Matplotlib): no library plot for this.
    """
    theta = np.asarray(theta, dtype=np.float64)
    traces = _traces_2d(traces)
    if theta.ndim != 2 or theta.shape[1] != N_PARAMS or traces.shape != (theta.shape[0], TIME_S.size):
        raise ValueError(
            f"theta must be (M, {N_PARAMS}) and traces (M, {TIME_S.size}); got {theta.shape} and {traces.shape}"
        )
    t = _TIME.to_display(TIME_S)
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5), sharex=True)
    styles = (("min", "#7a9cd6"), ("median", "#132a70"), ("max", "#b03a2e"))
    for i, (p, ax) in enumerate(zip(PARAMETERS, axes.flat)):
        order = np.argsort(theta[:, i], kind="stable")
        picks = (order[0], order[len(order) // 2], order[-1])
        for (what, color), k in zip(styles, picks):
            ax.plot(
                t,
                _VOLT.to_display(traces[k]),
                color=color,
                lw=0.9,
                label=f"{what}: {p.to_display(theta[k, i]):.3g} {p.display_unit}",
            )
        ax.set_title(f"{p.name} ({p.meaning})", fontsize=10)
        ax.legend(fontsize=7, loc="upper right")
        if i >= 3:
            ax.set_xlabel(f"time [{_TIME.display_unit}]")
        if i % 3 == 0:
            ax.set_ylabel(f"V [{_VOLT.display_unit}]")
    fig.tight_layout()
    return _save(fig, path)


def _in_support(theta: np.ndarray) -> np.ndarray:
    """Row mask: inside the prior box and ordered V_res < E_L < V_th (same rule and slack as
    `priors.check_theta`, which raises on the first bad row instead of masking)."""
    slack = 1e-6 * (HIGH - LOW)
    box = np.all((theta >= LOW - slack) & (theta <= HIGH + slack), axis=1)
    e, th, r = theta[:, INDEX["E_L"]], theta[:, INDEX["V_th"]], theta[:, INDEX["V_res"]]
    return box & (r < e) & (e < th) & np.all(np.isfinite(theta), axis=1)


def posterior_predictive(theta_draws, current, observed, *, level: float = PPC_LEVEL, theta_true=None, label=None) -> dict:
    """Simulate posterior draws with the observed trace's stimulus and compare with the trace.

    theta_draws: (S, 6) SI posterior draws for one trace; current: (501,) A; observed: (501,) or
    (501, 1) V. Draws outside the prior's support (or unordered) cannot be simulated and are
    dropped (counted in "n_dropped"). The band is the central `level` interval of the simulated
    traces at each sample (NumPy quantiles; no library does this).
    Returns a dict of plain lists/floats in display units (mV, ms): time, observed, lower, median,
    upper, coverage (fraction of observed samples inside the band, ends included), band width.
    """
    from .simulator import simulate  # local import: keep this module light for metric-only users

    theta_draws = np.asarray(theta_draws, dtype=np.float64)
    current = np.asarray(current, dtype=np.float64).reshape(-1)
    observed = np.asarray(observed, dtype=np.float64).reshape(-1)
    if theta_draws.ndim != 2 or theta_draws.shape[1] != N_PARAMS:
        raise ValueError(f"theta_draws must have shape (S, {N_PARAMS}) in SI units; got {theta_draws.shape}")
    if current.shape != TIME_S.shape or observed.shape != TIME_S.shape:
        raise ValueError(f"current and observed must have {TIME_S.size} samples; got {current.shape}, {observed.shape}")
    keep = _in_support(theta_draws)
    if not keep.any():
        raise ValueError("no posterior draw lies inside the prior's support; nothing to simulate")
    kept = theta_draws[keep]
    sims = simulate(kept, np.broadcast_to(current, (kept.shape[0], current.size)).copy()).double().numpy()
    q = (1 - level) / 2
    lower, median, upper = np.quantile(sims, [q, 0.5, 1 - q], axis=0)
    inside = (observed >= lower) & (observed <= upper)
    v = _VOLT.to_display
    result = {
        "label": label,
        "level": float(level),
        "n_draws": int(theta_draws.shape[0]),
        "n_dropped": int((~keep).sum()),
        "coverage": float(inside.mean()),
        "band_width_mean": float(v(upper - lower).mean()),
        "rmse_median": float(np.sqrt(np.mean(v(median - observed) ** 2))),
        "unit": _VOLT.display_unit,
        "time_unit": _TIME.display_unit,
        "time": _TIME.to_display(TIME_S).tolist(),
        "observed": v(observed).tolist(),
        "lower": v(lower).tolist(),
        "median": v(median).tolist(),
        "upper": v(upper).tolist(),
    }
    if theta_true is not None:
        result["theta_true"] = {p.name: float(x) for p, x in zip(PARAMETERS, np.asarray(theta_true).reshape(-1))}
    return result


def plot_posterior_predictive(cases: Sequence[Mapping], path) -> Path:
    """One panel per `posterior_predictive` result: observed trace over the predictive band."""
    cases = list(cases)
    if not cases:
        raise ValueError("need at least one posterior-predictive case")
    n = len(cases)
    ncol = min(n, 2)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(6.5 * ncol, 3.2 * nrow), squeeze=False, sharex=True)
    for k, (case, ax) in enumerate(zip(cases, axes.flat)):
        t = case["time"]
        ax.fill_between(t, case["lower"], case["upper"], color="#7a9cd6", alpha=0.5, lw=0,
                        label=f"{case['level']:.0%} predictive band")
        ax.plot(t, case["median"], color="#132a70", lw=0.8, label="predictive median")
        ax.plot(t, case["observed"], color="black", lw=0.8, ls="--", label="observed")
        title = case.get("label") or f"test trace {k}"
        ax.set_title(f"{title}: {case['coverage']:.0%} of samples inside band", fontsize=10)
        ax.set_ylabel(f"V [{case['unit']}]")
        if k >= n - ncol:  # bottom row of the shared time axis
            ax.set_xlabel(f"time [{case['time_unit']}]")
        if k == 0:
            ax.legend(fontsize=7, loc="upper right")
    for ax in axes.flat[n:]:
        ax.remove()
    fig.tight_layout()
    return _save(fig, path)


# ----------------------------------------------------------------------------- all at once


def _ppc_summary(cases: Sequence[Mapping]) -> dict:
    cov = [c["coverage"] for c in cases]
    return {
        "n_cases": len(cases),
        "level": float(cases[0]["level"]),
        "coverage_mean": float(np.mean(cov)),
        "coverage_min": float(np.min(cov)),
        "band_width_mean": float(np.mean([c["band_width_mean"] for c in cases])),
        "unit": cases[0]["unit"],
        "cases": [
            {k: c[k] for k in ("label", "coverage", "band_width_mean", "rmse_median", "n_draws", "n_dropped")}
            for c in cases
        ],
    }


def run_all(
    out_dir,
    theta_true,
    draws,
    *,
    history: Mapping[str, Sequence[float]] | None = None,
    prior_theta=None,
    prior_traces=None,
    ppc_cases: Sequence | None = None,
    seed: int | None = 0,
    metrics_file: str | None = "metrics.json",
) -> tuple[dict, list[Path]]:
    """Compute every metric and write every figure into `out_dir`.

    theta_true (N, 6) SI and draws (N, S, 6) SI: test set and its posterior draws.
    history: Keras History.history dict (loss plot skipped if None/empty).
    prior_theta (M, 6) SI [+ prior_traces (M, 501) V]: prior histograms [+ example traces].
    ppc_cases: posterior-predictive cases, each either a `posterior_predictive` result or a
    dict with keys theta_draws (S, 6), current (501,), observed (501,) [label, theta_true]
    (or a tuple (theta_draws, current, observed)).
    Writes `metrics_file` (JSON, atomically; None to skip) and the PNGs named in `PLOT_FILES`.
    Returns (metrics, plot paths in report order); metrics gains "posterior_predictive" when
    cases are given.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = compute_metrics(theta_true, draws, seed=seed)
    paths: list[Path] = []
    if history and history.get("loss"):
        paths.append(plot_loss(history, out_dir / PLOT_FILES["loss"]))
    paths.append(plot_recovery(theta_true, draws, out_dir / PLOT_FILES["recovery"]))
    log_gamma = {k: v["log_gamma"] for k, v in metrics["parameters"].items()}
    paths.append(plot_sbc_ecdf(theta_true, draws, out_dir / PLOT_FILES["sbc_ecdf"], seed=seed, log_gamma=log_gamma))
    paths.append(plot_z_score_contraction(theta_true, draws, out_dir / PLOT_FILES["z_score_contraction"]))
    paths.append(plot_coverage(theta_true, draws, out_dir / PLOT_FILES["coverage"]))
    paths.append(plot_coverage_curve(theta_true, draws, out_dir / PLOT_FILES["coverage_curve"]))
    if prior_theta is not None:
        paths.append(plot_prior_histograms(prior_theta, out_dir / PLOT_FILES["prior_histograms"]))
        if prior_traces is not None:
            paths.append(plot_example_traces(prior_theta, prior_traces, out_dir / PLOT_FILES["example_traces"]))
    if ppc_cases:
        cases = []
        for k, case in enumerate(ppc_cases):
            if isinstance(case, Mapping) and "lower" in case:
                cases.append(case)
            elif isinstance(case, Mapping):
                cases.append(
                    posterior_predictive(
                        case["theta_draws"],
                        case["current"],
                        case["observed"],
                        theta_true=case.get("theta_true"),
                        label=case.get("label", f"test trace {k}"),
                    )
                )
            else:
                theta_draws, current, observed = case
                cases.append(posterior_predictive(theta_draws, current, observed, label=f"test trace {k}"))
        metrics["posterior_predictive"] = _ppc_summary(cases)
        paths.append(plot_posterior_predictive(cases, out_dir / PLOT_FILES["posterior_predictive"]))
    if metrics_file:
        atomic_write_text(out_dir / metrics_file, json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    return metrics, paths


__all__ = [
    "COVERAGE_LEVELS",
    "PLOT_FILES",
    "atomic_write_text",
    "compute_metrics",
    "coverage_tolerance",
    "interval_coverage",
    "plot_coverage",
    "plot_coverage_curve",
    "plot_example_traces",
    "plot_loss",
    "plot_posterior_predictive",
    "plot_prior_histograms",
    "plot_recovery",
    "plot_sbc_ecdf",
    "plot_z_score_contraction",
    "posterior_predictive",
    "run_all",
]
