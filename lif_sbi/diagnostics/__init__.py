"""Recovery and calibration diagnostics of a trained posterior estimator: metrics and figures.

Everything here takes plain NumPy arrays in SI units, columns in `lif_sbi.priors.PARAM_NAMES`
order, and converts to display units (pF, nS, mV, ms) for tables and figures with the scales
declared in `lif_sbi.priors`. BayesFlow's diagnostics do the work wherever one exists
(`bf.diagnostics.metrics.*`, `bf.diagnostics.plots.*`); what is written by hand says so.

Modules: `metrics` (compute_metrics, interval_coverage, coverage_tolerance), `loss_plot`,
`recovery_plots`, `calibration_plots` (SBC ECDF, z-score vs contraction, coverage curve and
bars), `traces` (prior histograms, example traces), `predictive` (posterior-predictive checks),
`_common` (shared helpers). Main entry points: `compute_metrics`, the `plot_*` functions (one PNG
each, path returned), `posterior_predictive`, and `run_all`, which the training command calls
with arrays.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless, before any module of the package imports pyplot: figures are only written to files

from collections.abc import Mapping, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

from ..files import atomic_write_json  # noqa: E402
from .calibration_plots import plot_coverage, plot_coverage_curve, plot_sbc_ecdf, plot_z_score_contraction  # noqa: E402
from .loss_plot import plot_loss  # noqa: E402
from .metrics import (  # noqa: E402
    COVERAGE_LEVELS,
    LOG_GAMMA_FLOOR,
    SBC_QUANTILE,
    compute_metrics,
    coverage_tolerance,
    interval_coverage,
)
from ..stimulus import DT_S  # noqa: E402
from .predictive import (  # noqa: E402
    PPC_LEVEL,
    _as_results,
    _ppc_summary,
    plot_posterior_predictive,
    posterior_predictive,
    spike_time_check,
)
from .recovery_plots import plot_recovery  # noqa: E402
from .traces import plot_example_traces, plot_prior_histograms  # noqa: E402

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
    dt_s: float = DT_S,
    noise_sd_v: float = 0.0,
) -> tuple[dict, list[Path]]:
    """Compute every metric and write every figure into `out_dir`.

    theta_true (N, 6) SI and draws (N, S, 6) SI: test set and its posterior draws.
    history: Keras History.history dict (loss plot skipped if None/empty).
    prior_theta (M, 6) SI [+ prior_traces (M, T) V]: prior histograms [+ example traces].
    ppc_cases: posterior-predictive cases, each either a `posterior_predictive` result or a
    dict with keys theta_draws (S, 6), current (T,), observed (T,) [label, theta_true]
    (or a tuple (theta_draws, current, observed)). dt_s: the traces' step; noise_sd_v: the
    recording noise the observations carry (added to the posterior-predictive traces).
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
            paths.append(plot_example_traces(prior_theta, prior_traces, out_dir / PLOT_FILES["example_traces"], dt_s=dt_s))
    if ppc_cases:
        cases = _as_results(ppc_cases, dt_s=dt_s, noise_sd_v=noise_sd_v)
        metrics["posterior_predictive"] = _ppc_summary(cases)
        paths.append(plot_posterior_predictive(cases, out_dir / PLOT_FILES["posterior_predictive"]))
    if metrics_file:
        atomic_write_json(out_dir / metrics_file, metrics)
    return metrics, paths


__all__ = [
    "COVERAGE_LEVELS",
    "LOG_GAMMA_FLOOR",
    "PLOT_FILES",
    "PPC_LEVEL",
    "SBC_QUANTILE",
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
    "spike_time_check",
]
