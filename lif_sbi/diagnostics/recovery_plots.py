"""Parameter recovery: posterior mean and central interval against the truth, BayesFlow's `recovery` plot."""

from __future__ import annotations

from pathlib import Path

import bayesflow as bf
import numpy as np

from ..priors import N_PARAMS
from ._common import _GRID, _check_pair, _label, _save, _to_display


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
