"""Posterior-predictive checks: simulate posterior draws with a trace's stimulus and compare with the trace."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from ..priors import HIGH, INDEX, LOW, N_PARAMS, PARAMETERS
from ..stimulus import TIME_S
from ._common import _TIME, _VOLT, _save

PPC_LEVEL = 0.9  # central posterior-predictive band


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
    from ..simulator import simulate  # local import: keep the package light for metric-only users

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


def _as_results(ppc_cases: Sequence) -> list[dict]:
    """`posterior_predictive` results of cases given as results, as dicts with keys theta_draws,
    current, observed [label, theta_true], or as tuples (theta_draws, current, observed)."""
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
    return cases


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
