"""Posterior-predictive checks: simulate posterior draws with a trace's stimulus and compare with the trace."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from ..priors import HIGH, INDEX, LOW, N_PARAMS, PARAMETERS
from ..stimulus import DT_S
from ._common import _TIME, _VOLT, _save

PPC_LEVEL = 0.9  # central posterior-predictive band
# A spike is a drop of V by more than this from one sample to the next: an LIF resets from V_th to
# V_res, at least 10 mV lower under the priors; 0.5 mV of recording noise makes one-sample drops
# of 5 mV a 7-sigma event.
SPIKE_DROP_V = 5e-3
SPIKE_CHECK_DRAWS = 200  # posterior draws per trace simulated for the spike-time check


def _in_support(theta: np.ndarray) -> np.ndarray:
    """Row mask: inside the prior box and ordered V_res < E_L < V_th (same rule and slack as
    `priors.check_theta`, which raises on the first bad row instead of masking)."""
    slack = 1e-6 * (HIGH - LOW)
    box = np.all((theta >= LOW - slack) & (theta <= HIGH + slack), axis=1)
    e, th, r = theta[:, INDEX["E_L"]], theta[:, INDEX["V_th"]], theta[:, INDEX["V_res"]]
    return box & (r < e) & (e < th) & np.all(np.isfinite(theta), axis=1)


def _predictive_traces(theta_draws, current, *, dt_s: float, noise_sd_v: float, seed: int):
    """Simulate the draws inside the prior's support with `current` (T,) A on the grid of step
    `dt_s`, plus recording noise of sd `noise_sd_v` (seeded): (kept mask (S,), traces (S', T) V)."""
    from ..simulator import simulate  # local import: keep the package light for metric-only users

    keep = _in_support(theta_draws)
    if not keep.any():
        raise ValueError("no posterior draw lies inside the prior's support; nothing to simulate")
    kept = theta_draws[keep]
    sims = simulate(kept, np.broadcast_to(current, (kept.shape[0], current.size)).copy(), dt_s).double().numpy()
    if noise_sd_v:
        sims = sims + np.random.default_rng(seed).normal(0.0, noise_sd_v, size=sims.shape)
    return keep, sims


def posterior_predictive(theta_draws, current, observed, *, level: float = PPC_LEVEL, theta_true=None, label=None,
                         dt_s: float = DT_S, noise_sd_v: float = 0.0, seed: int = 0) -> dict:
    """Simulate posterior draws with the observed trace's stimulus (the known, injected current)
    and compare with the trace.

    theta_draws: (S, 6) SI posterior draws for one trace; current: (T,) A; observed: (T,) or
    (T, 1) V, on the grid t_i = i dt_s; noise_sd_v: the recording noise the observation carries,
    added to the simulated traces (seeded by `seed`). Draws outside the prior's support (or
    unordered) cannot be simulated and are dropped (counted in "n_dropped"). The band is the
    central `level` interval of the simulated traces at each sample (NumPy quantiles; no library
    does this). Returns a dict of plain lists/floats in display units (mV, ms): time, observed,
    lower, median, upper, coverage (fraction of observed samples inside the band, ends included),
    band width, and the spike-time check of `spike_times_inside` for this trace.
    """
    theta_draws = np.asarray(theta_draws, dtype=np.float64)
    current = np.asarray(current, dtype=np.float64).reshape(-1)
    observed = np.asarray(observed, dtype=np.float64).reshape(-1)
    if theta_draws.ndim != 2 or theta_draws.shape[1] != N_PARAMS:
        raise ValueError(f"theta_draws must have shape (S, {N_PARAMS}) in SI units; got {theta_draws.shape}")
    if current.ndim != 1 or current.shape != observed.shape or current.size < 2:
        raise ValueError(f"current and observed must have the same number of samples; got {current.shape}, {observed.shape}")
    keep, sims = _predictive_traces(theta_draws, current, dt_s=dt_s, noise_sd_v=noise_sd_v, seed=seed)
    q = (1 - level) / 2
    lower, median, upper = np.quantile(sims, [q, 0.5, 1 - q], axis=0)
    inside = (observed >= lower) & (observed <= upper)
    v = _VOLT.to_display
    n_spikes, n_inside = spike_times_inside(sims, observed, level)
    result = {
        "label": label,
        "level": float(level),
        "n_draws": int(theta_draws.shape[0]),
        "n_dropped": int((~keep).sum()),
        "coverage": float(inside.mean()),
        "band_width_mean": float(v(upper - lower).mean()),
        "rmse_median": float(np.sqrt(np.mean(v(median - observed) ** 2))),
        "spikes_observed": n_spikes,
        "spikes_inside": n_inside,
        "unit": _VOLT.display_unit,
        "time_unit": _TIME.display_unit,
        "time": _TIME.to_display(np.arange(current.size) * dt_s).tolist(),
        "observed": v(observed).tolist(),
        "lower": v(lower).tolist(),
        "median": v(median).tolist(),
        "upper": v(upper).tolist(),
    }
    if theta_true is not None:
        result["theta_true"] = {p.name: float(x) for p, x in zip(PARAMETERS, np.asarray(theta_true).reshape(-1))}
    return result


def spike_samples(v: np.ndarray) -> list[np.ndarray]:
    """Spike sample indices per trace of v (N, T) V: where V drops by more than SPIKE_DROP_V."""
    drops = (v[:, :-1] - v[:, 1:]) > SPIKE_DROP_V
    return [np.flatnonzero(row) + 1 for row in drops]


def spike_times_inside(sims: np.ndarray, observed: np.ndarray, level: float = PPC_LEVEL) -> tuple[int, int]:
    """(observed spikes, those inside the predictive interval): the k-th observed spike is inside
    when its sample lies in the central `level` interval of the k-th spike's sample over the
    simulated traces sims (S, T), a trace without a k-th spike counting as spiking after the
    window (so a spike the posterior predicts with probability < 1 - level/2 is never inside).
    Written by hand: no library checks predicted spike times."""
    observed_spikes = spike_samples(observed[None])[0]
    predicted = spike_samples(sims)
    never = sims.shape[1]  # a sample after the window
    q = (1 - level) / 2
    n_inside = 0
    for k, t_obs in enumerate(observed_spikes):
        t_k = np.array([row[k] if len(row) > k else never for row in predicted], dtype=np.float64)
        lo, hi = np.quantile(t_k, [q, 1 - q])
        n_inside += int(lo <= t_obs <= hi)
    return int(len(observed_spikes)), n_inside


def spike_time_check(draws: np.ndarray, currents: np.ndarray, observed: np.ndarray, *, dt_s: float = DT_S,
                     noise_sd_v: float = 0.0, seed: int = 0, level: float = PPC_LEVEL) -> dict:
    """The spike-time posterior-predictive check over many traces: draws (N, S, 6) SI (the first
    SPIKE_CHECK_DRAWS of each used), currents (N, T) A, observed (N, T) V. Returns the share of
    observed spikes inside their predictive interval (`spike_times_inside`), and the counts."""
    n_spikes = n_inside = 0
    for i in range(len(draws)):
        _, sims = _predictive_traces(np.asarray(draws[i][:SPIKE_CHECK_DRAWS], dtype=np.float64), np.asarray(currents[i], dtype=np.float64),
                                     dt_s=dt_s, noise_sd_v=noise_sd_v, seed=seed + i)
        a, b = spike_times_inside(sims, np.asarray(observed[i], dtype=np.float64).reshape(-1), level)
        n_spikes, n_inside = n_spikes + a, n_inside + b
    return {"level": float(level), "n_traces": int(len(draws)), "draws_per_trace": int(min(SPIKE_CHECK_DRAWS, draws.shape[1])),
            "spikes_observed": n_spikes, "spikes_inside": n_inside,
            "share_inside": None if n_spikes == 0 else n_inside / n_spikes}


def _as_results(ppc_cases: Sequence, **grid) -> list[dict]:
    """`posterior_predictive` results of cases given as results, as dicts with keys theta_draws,
    current, observed [label, theta_true], or as tuples (theta_draws, current, observed); `grid`:
    dt_s and noise_sd_v for `posterior_predictive`."""
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
                    seed=k,
                    **grid,
                )
            )
        else:
            theta_draws, current, observed = case
            cases.append(posterior_predictive(theta_draws, current, observed, label=f"test trace {k}", seed=k, **grid))
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
            {k: c[k] for k in ("label", "coverage", "band_width_mean", "rmse_median", "n_draws", "n_dropped", "spikes_observed", "spikes_inside")
             if k in c}
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
