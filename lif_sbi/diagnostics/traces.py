"""Figures of the simulated data set: prior histograms and example traces."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from ..priors import N_PARAMS, PARAMETERS
from ..stimulus import DT_S
from ._common import _TIME, _VOLT, _save


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


def plot_example_traces(theta, traces, path, *, dt_s: float = DT_S) -> Path:
    """For each parameter, the traces of the draws with its min, median and max value.

    theta: (M, 6) SI; traces: (M, T) or (M, T, 1) in V on the grid t_i = i dt_s. Drawn in mV vs ms.
    Hand-written (Matplotlib): no library plot for this.
    """
    theta = np.asarray(theta, dtype=np.float64)
    traces = _traces_2d(traces)
    if theta.ndim != 2 or theta.shape[1] != N_PARAMS or traces.ndim != 2 or traces.shape[0] != theta.shape[0]:
        raise ValueError(
            f"theta must be (M, {N_PARAMS}) and traces (M, T); got {theta.shape} and {traces.shape}"
        )
    t = _TIME.to_display(np.arange(traces.shape[1]) * dt_s)
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
