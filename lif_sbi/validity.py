"""Whether a trace lies where the model was trained: voltage-range, summary-distance and prior-bound checks, calibrated on held-out simulated traces."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .priors import HIGH, LOW, PARAMETERS

FILENAME = "validity.json"
# held-out simulated traces, n = `diagnostics.validity_traces`: the summary distance's mean and
# covariance are fitted on 2n, every threshold is set on n more, the false-alarm rate measured on n more
DRAWS = 200  # posterior draws per trace for the bound statistics
#: each statistic's threshold is the most extreme value among the n calibration traces, so that a
#: new trace from the model's own set-up passes it with probability n / (n + 1); 8 one-sided
#: limits (v_rest has two) bound the false alarms by 8 / (n + 1), 0.8 % at n = 1000 (measured
#: on n further traces and stored as `false_alarm_rate`)
SIDES = {"v_max_mV": "high", "v_min_mV": "low", "v_rest_mV": "both", "distance": "high", "leak_distance": "high", "bound_piles": "high",
         "ppc_coverage": "low"}
PPC_DRAWS = 100  # posterior draws simulated per trace (with its own current) for the predictive coverage
EDGE_SHARE = 0.01  # a draw within this share of its prior's width from a bound counts as on the bound
#: a parameter "piles" on a bound when this share of its draws lies there; the statistic is how
#: many parameters pile (one alone is common where the truth lies at a bound: the prior's
#: answers of a trace it cannot explain pile several, e.g. the corner of the prior box)
PILE_SHARE = 0.5
REST_CURRENT_A = 1e-12  # samples with |I| below this are "at rest" for the resting-voltage statistic
REST_MIN_SHARE = 0.05  # the resting statistic needs at least this share of the window at rest
SEED_OFFSET = 104729  # the held-out traces' seeds: the data's seed plus this (plus 1, 2)


def voltage_statistics(voltage_v: np.ndarray, current_a: np.ndarray | None) -> dict[str, np.ndarray]:
    """Per trace (N, T) V: its highest and lowest voltage and its median at rest (where the known
    current is zero; NaN without one), all in mV."""
    v = np.asarray(voltage_v, dtype=np.float64).reshape(len(voltage_v), -1) * 1e3
    rest = np.full(len(v), np.nan)
    if current_a is not None:
        at_rest = np.abs(np.asarray(current_a).reshape(v.shape)) < REST_CURRENT_A
        for n in np.flatnonzero(at_rest.mean(axis=1) >= REST_MIN_SHARE):
            rest[n] = np.median(v[n][at_rest[n]])
    return {"v_max_mV": v.max(axis=1), "v_min_mV": v.min(axis=1), "v_rest_mV": rest}


def bound_shares(draws: np.ndarray) -> np.ndarray:
    """Share of each trace's draws (N, S, 6) SI within EDGE_SHARE of either prior bound: (N, 6)."""
    edge = EDGE_SHARE * (HIGH - LOW)
    return ((draws <= LOW + edge) | (draws >= HIGH - edge)).mean(axis=1)


def summaries(approximator, voltage_v: np.ndarray, current_a: np.ndarray | None, dt_s: float) -> np.ndarray:
    """What the flow is conditioned on, per trace: the summary network's output and, for a model
    with leak or spike features, those features: (N, D) float64."""
    from . import estimator

    conditions = {"observables": estimator.as_observables(voltage_v)}
    if estimator.observes_current(approximator):
        conditions["current"] = np.asarray(current_a, dtype=np.float32)
    conditions = estimator.with_features(approximator, conditions, dt_s)
    out = [np.asarray(approximator.summarize(conditions), dtype=np.float64)]
    out += [np.asarray(conditions[k], dtype=np.float64) for k in ("features", "spike_features") if k in conditions]
    return np.concatenate(out, axis=1)


def leak_fit(voltage_v: np.ndarray, current_a: np.ndarray, dt_s: float) -> np.ndarray:
    """The membrane equation fitted to each trace and its known current (`features.leak_features`):
    (N, 4) float64, whatever the model is conditioned on. A trace that does not answer its current
    as a leaky membrane does (a flat line under a step) lies far from the simulated traces' fits."""
    from . import features

    return np.asarray(features.leak_features(np.asarray(voltage_v, dtype=np.float32), np.asarray(current_a, dtype=np.float32), dt_s),
                      dtype=np.float64)


def _gaussian(x: np.ndarray) -> dict:
    """Mean and (slightly regularised) inverse covariance of rows x (N, D), as lists."""
    cov = np.atleast_2d(np.cov(x, rowvar=False))
    cov = cov + 1e-6 * np.eye(len(cov)) * np.trace(cov) / len(cov)
    return {"mean": x.mean(axis=0).tolist(), "precision": np.linalg.inv(cov).tolist()}


@dataclass(frozen=True)
class Check:
    """The fitted check: per distance statistic ("distance": the flow's conditions; "leak_distance":
    the membrane fit, for a model that knows the current) its mean and inverse covariance, and every
    statistic's thresholds; `record` is what validity.json holds."""

    gaussians: dict
    record: dict

    def distances(self, approximator, voltage_v, current_a, dt_s: float) -> dict[str, np.ndarray]:
        """Mahalanobis distance of each trace (N, T) V from the simulated traces, per distance statistic."""
        inputs = {"distance": lambda: summaries(approximator, voltage_v, current_a, dt_s),
                  "leak_distance": lambda: leak_fit(voltage_v, current_a, dt_s)}
        out = {}
        for key, g in self.gaussians.items():
            d = inputs[key]() - np.asarray(g["mean"])
            out[key] = np.sqrt(np.einsum("nd,de,ne->n", d, np.asarray(g["precision"]), d))
        return out

    def save(self, run_dir: Path) -> Path:
        from .files import atomic_write_json

        return atomic_write_json(Path(run_dir) / FILENAME, self.record | {"gaussians": self.gaussians})

    @classmethod
    def load(cls, run_dir: Path) -> Check | None:
        path = Path(run_dir) / FILENAME
        if not path.is_file():
            return None
        rec = json.loads(path.read_text())
        return cls(rec.pop("gaussians"), rec)


def _simulate(config, n: int, seed: int):
    """`n` traces of the run's own set-up, with its recording noise: (voltage (N, T) V, current (N, T) A, theta)."""
    from . import dataset, noise
    from .runner import NOISE_SEED_OFFSET

    d = dataset.simulate_dataset(n, seed, progress=False, stimulus_spec=config.stimulus, prior=config.prior.kind)
    v = noise.add_noise(d["observables"], config.noise.sd_v, seed=seed + NOISE_SEED_OFFSET)[:, :, 0]
    return v, d["current"], d["parameters"]


def predictive_coverage(draws, voltage_v, current_a, dt_s: float, noise_sd_v: float, seed: int) -> np.ndarray:
    """Per trace, the share of its samples inside the 90 % band of its posterior predictive
    (PPC_DRAWS draws simulated with its own current, plus the recording noise): (N,). Whether an
    LIF of the posterior reproduces the trace, not only whether the trace looks like training data."""
    from .diagnostics import posterior_predictive

    out = np.full(len(draws), np.nan)
    for n in range(len(draws)):
        try:
            out[n] = posterior_predictive(draws[n, :PPC_DRAWS], current_a[n], voltage_v[n], dt_s=dt_s, noise_sd_v=noise_sd_v,
                                          seed=seed + n)["coverage"]
        except ValueError:  # no draw inside the prior's support to simulate: nothing to compare
            continue
    return out


def statistics(check: Check | None, approximator, voltage_v, current_a, dt_s: float, draws, *, observe_current: bool,
               noise_sd_v: float = 0.0, seed: int = 0) -> dict:
    """Every statistic of traces (N, T) V with their currents (N, T) A and posterior draws (N, S, 6):
    voltages, distances (none before the check is fitted), bound shares per parameter and how many
    pile, and (current known) the posterior-predictive coverage."""
    stats = voltage_statistics(voltage_v, current_a if observe_current else None)
    if observe_current:
        stats["ppc_coverage"] = predictive_coverage(draws, voltage_v, current_a, dt_s, noise_sd_v, seed)
    if check is not None:
        stats |= check.distances(approximator, voltage_v, current_a, dt_s)
    shares = bound_shares(draws)
    for i, p in enumerate(PARAMETERS):
        stats[f"bound_{p.name}"] = shares[:, i]
    stats["bound_piles"] = (shares >= PILE_SHARE).sum(axis=1).astype(np.float64)
    return stats


def _statistics(check_or_none, approximator, config, v, cur, width_scale, seed):
    """`statistics` of simulated traces (v, cur), with DRAWS posterior draws each."""
    from . import estimator

    known = cur if config.model.observe_current else None
    draws = estimator.sample_posterior(approximator, v, DRAWS, seed=seed, width_scale=width_scale, current=known,
                                       prior=config.prior.kind, dt_s=config.stimulus.dt_s)
    return statistics(check_or_none, approximator, v, cur, config.stimulus.dt_s, draws, observe_current=config.model.observe_current,
                      noise_sd_v=config.noise.sd_v, seed=seed)


def fit(approximator, config, width_scale=None) -> Check:
    """Fit the check for a run (n = `diagnostics.validity_traces`): the summary distance on 2n
    simulated traces of its set-up, every threshold on n more, the false-alarm rate measured on n more."""
    seed, n = config.data.seed + SEED_OFFSET, config.diagnostics.validity_traces
    v, cur, _ = _simulate(config, 2 * n, seed)
    gaussians = {"distance": _gaussian(summaries(approximator, v, cur, config.stimulus.dt_s))}
    if config.model.observe_current:
        gaussians["leak_distance"] = _gaussian(leak_fit(v, cur, config.stimulus.dt_s))
    check = Check(gaussians, {})
    v, cur, _ = _simulate(config, n, seed + 1)
    cal = _statistics(check, approximator, config, v, cur, width_scale, seed + 1)
    thresholds = {}
    for key, side in SIDES.items():
        x = cal.get(key, np.array([]))
        x = x[np.isfinite(x)]
        if len(x) == 0:
            continue
        thresholds[key] = [float(x.min()) if side in ("low", "both") else None, float(x.max()) if side in ("high", "both") else None]
    check = Check(gaussians, {"thresholds": thresholds})
    v, cur, _ = _simulate(config, n, seed + 2)
    flagged = [not ok for ok, _ in judge(check, _statistics(check, approximator, config, v, cur, width_scale, seed + 2))]
    record = {
        "thresholds": thresholds, "edge_share": EDGE_SHARE, "pile_share": PILE_SHARE, "draws": DRAWS,
        "fit_traces": 2 * n, "calibration_traces": n, "check_traces": n,
        "false_alarm_rate": float(np.mean(flagged)),
    }
    return Check(gaussians, record)


def _range(p) -> str:
    return f"{p.low * p.display_scale:g} to {p.high * p.display_scale:g} {p.display_unit}"


def _reason(key: str, value: float, lo, hi, row: dict) -> str:
    """The sentence for one statistic outside its calibrated range, naming the parameter(s) whose prior it points at."""
    by = {p.name: p for p in PARAMETERS}
    if key == "leak_distance":
        return (f"it answers its current unlike a leaky membrane of these priors: its membrane fit lies {value:.1f} (Mahalanobis) "
                f"from the simulated traces', beyond {hi:.1f}")
    if key == "distance":
        return f"its summary lies {value:.1f} (Mahalanobis) from the simulated traces', beyond {hi:.1f}: unlike any trace the model was trained on"
    if key == "bound_piles":
        piled = [f"{p.name} {row[f'bound_{p.name}']:.0%} ({_range(p)})" for p in PARAMETERS if row[f"bound_{p.name}"] >= PILE_SHARE]
        return (f"the draws of {int(value)} parameters pile on a bound of their priors, more than any simulated trace's ({int(hi)}): "
                f"{', '.join(piled)}: the data ask for values outside them")
    where = "above" if hi is not None and value > hi else "below"
    limit = hi if where == "above" else lo
    if key == "ppc_coverage":
        return (f"an LIF of its posterior does not reproduce it: its posterior-predictive 90 % band holds {value:.0%} of its samples, "
                f"fewer than for any simulated trace ({lo:.0%})")
    if key == "v_max_mV":
        return f"it rises to {value:.1f} mV, {where} any simulated trace ({limit:.1f} mV): V_th's prior is {_range(by['V_th'])}"
    if key == "v_min_mV":
        return f"it falls to {value:.1f} mV, {where} any simulated trace ({limit:.1f} mV): V_res's prior is {_range(by['V_res'])}, E_L's {_range(by['E_L'])}"
    return f"it rests at {value:.1f} mV where no current flows, {where} any simulated trace ({limit:.1f} mV): E_L's prior is {_range(by['E_L'])}"


def judge(check: Check, stats: dict[str, np.ndarray]) -> list[tuple[bool, list[str]]]:
    """(valid, reasons) per trace: valid when every statistic lies inside its calibrated range."""
    n = len(next(iter(stats.values())))
    out = []
    for k in range(n):
        reasons = []
        row = {key: float(v[k]) for key, v in stats.items()}
        for key, (lo, hi) in check.record["thresholds"].items():
            x = row.get(key, float("nan"))
            if np.isfinite(x) and ((hi is not None and x > hi) or (lo is not None and x < lo)):
                reasons.append(_reason(key, x, lo, hi, row))
        out.append((not reasons, reasons))
    return out
