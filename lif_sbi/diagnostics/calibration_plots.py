"""Calibration figures: SBC rank ECDF, z-score vs contraction, coverage curve and coverage bars."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import bayesflow as bf
import matplotlib.pyplot as plt
import numpy as np

from ..priors import N_PARAMS, PARAM_NAMES
from ._common import _GRID, _check_pair, _save, _seeded_global_numpy, _to_display
from .metrics import COVERAGE_LEVELS, coverage_tolerance, interval_coverage


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
            # below -700 is the floor (metrics.LOG_GAMMA_FLOOR): gamma underflowed
            return f"{name} (log γ < −700)" if lg < -700 else f"{name} (log γ = {lg:.2f})"

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
