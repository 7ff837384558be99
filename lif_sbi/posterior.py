"""A finished run loaded for inference (`lif_sbi.load`): posterior draws, densities and the validity check for new traces."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from .errors import InputError
from .priors import HIGH, LOW, PARAMETERS


def finished_run(run_dir) -> Path:
    """`run_dir` as a Path when it holds a finished run (model.keras, config.toml and report.md),
    else InputError saying what is missing."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        hint = " (arguments swapped? the run folder comes first)" if run_dir.suffix.lower() in (".abf", ".nwb", ".csv", ".txt", ".npy", ".npz") else ""
        raise InputError(f"{run_dir}: is a file: expected a run folder (results/<run_id>) holding model.keras{hint}")
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: no such run folder: expected results/<run_id> of a finished training run")
    missing = [f for f in ("model.keras", "config.toml", "report.md") if not (run_dir / f).is_file()]
    if missing:
        raise InputError(f"{run_dir}: not a finished run (no {', '.join(missing)}; a run is finished once report.md is written): "
                         "finish it with python -m lif_sbi.train --resume, or pass another folder")
    return run_dir


def run_config(run_dir: Path):
    from .config import ConfigError, load_config

    try:
        return load_config(str(run_dir / "config.toml"))
    except ConfigError as exc:
        raise InputError(f"{run_dir / 'config.toml'}: not a configuration this version of lif_sbi reads ({exc})") from None


def _approximator(run_dir: Path):
    from . import __version__, estimator

    path = run_dir / "model.keras"
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path}: corrupt (not a Keras archive; half-written or damaged): train the run again")
    try:
        return estimator.load_approximator(path)
    except Exception as exc:  # noqa: BLE001  (Keras raises many kinds for a model it cannot rebuild)
        env = run_dir / "environment.json"
        saved = json.loads(env.read_text()) if env.is_file() else {}
        made = f"; it was saved by lif_sbi {saved.get('lif_sbi', '?')}, keras {saved.get('keras', '?')}" if saved else ""
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: could not be loaded ({reason}){made}; this is lif_sbi {__version__}: corrupt, or from an "
                         "incompatible version") from None


class Posterior:
    """A trained run's posterior estimator.

    parameter_names (6,), units (SI: F, S, V, V, V, s), display_units (pF, nS, mV, mV, mV, ms)
    and bounds (6, 2) in SI: the prior's. dt_s and n_samples: the time grid traces must be on;
    observes_current: whether `current` (N, T) in A must be passed. `check` is the run's fitted
    validity check (lif_sbi.validity), fitted now on simulated traces when the run has none saved.
    """

    def __init__(self, run_dir):
        from . import calibration, priors, quiet, validity

        quiet.libraries()
        self.run_dir = finished_run(run_dir)
        self.config = run_config(self.run_dir)
        priors.set_box(self.config.prior.bounds())  # the run's prior box, for this process
        with quiet.startup_lines():
            self.approximator = _approximator(self.run_dir)
        self.width_scale = calibration.load_for(self.run_dir / "model.keras")
        self.parameter_names = tuple(p.name for p in PARAMETERS)
        self.units = tuple(p.unit for p in PARAMETERS)
        self.display_units = tuple(p.display_unit for p in PARAMETERS)
        self.bounds = np.stack([LOW, HIGH], axis=1)
        self.dt_s = self.config.stimulus.dt_s
        self.n_samples = self.config.stimulus.n_samples
        self.observes_current = bool(self.config.model.observe_current)
        self.prior = self.config.prior.kind
        self.noise_sd_v = self.config.noise.sd_v
        self._check = validity.Check.load(self.run_dir)

    @property
    def check(self):
        """The run's validity check (validity.json), or one fitted now on the run's own set-up."""
        from . import validity

        if self._check is None:
            self._check = validity.fit(self.approximator, self.config, self.width_scale)
        return self._check

    def _inputs(self, traces, current):
        v = np.asarray(traces, dtype=np.float64)
        v = v[None] if v.ndim == 1 else v
        if v.ndim != 2 or v.shape[1] != self.n_samples:
            raise ValueError(f"traces must be (N, {self.n_samples}) in V (the run's window at {self.dt_s * 1e3:g} ms); got {np.shape(traces)}")
        if self.observes_current and current is None:
            raise ValueError("this run's model observes the injected current: pass current=(N, T) in A")
        cur = None if current is None or not self.observes_current else np.asarray(current, dtype=np.float64).reshape(v.shape)
        return v, cur

    def sample(self, traces, n: int = 1000, current=None, seed: int | None = 0, max_rounds: int = 10,
               return_acceptance: bool = False) -> np.ndarray:
        """Posterior draws (N, n, 6) in SI units for traces (N, T) or (T,) in V, confined to the prior's
        support (draws outside it drawn again, up to `max_rounds` rounds: `estimator.sample_posterior`).
        return_acceptance=True also returns each trace's share of draws inside the support (N,)."""
        from . import estimator

        v, cur = self._inputs(traces, current)
        return estimator.sample_posterior(self.approximator, v, n, seed=seed, width_scale=self.width_scale, current=cur,
                                          prior=self.prior, dt_s=self.dt_s, max_rounds=max_rounds,
                                          return_acceptance=return_acceptance)

    def log_prob(self, theta, traces, current=None) -> np.ndarray:
        """log q(θ | trace), θ in SI units: theta (N, 6) paired with traces (N, T), or (S, 6) with one
        trace (T,). The flow's density as trained, per unit of SI parameter volume; -inf outside the
        prior's support (`sample` draws from it restricted there). Not available for a run whose
        width calibration rescales draws per trace (it has no density)."""
        from . import estimator, priors

        if self.width_scale is not None and not np.all(np.asarray(self.width_scale) == 1.0):
            raise NotImplementedError("this run rescales posterior widths per trace (calibration.json), which has no density; use sample()")
        theta = np.atleast_2d(np.asarray(theta, dtype=np.float64))
        v, cur = self._inputs(traces, current)
        one_trace = len(v) == 1 and len(theta) > 1  # every θ with the one trace
        if theta.shape != (len(theta) if one_trace else len(v), 6):
            raise ValueError(f"theta must be (N, 6) in SI units, one row per trace, or (S, 6) with one trace; got {theta.shape}")
        inside = priors.in_support(theta, kind=self.prior)  # the flow's bijection is undefined beyond its bounds
        out = np.full(len(theta), -np.inf)
        if not inside.any():
            return out
        conditions = {"observables": estimator.as_observables(v)}
        if cur is not None:  # the trace's leak features, if any, once per trace
            conditions = estimator.with_features(self.approximator, conditions | {"current": cur.astype(np.float32)}, self.dt_s)
        rows = np.zeros(int(inside.sum()), dtype=int) if one_trace else np.flatnonzero(inside)
        data = {k: value[rows] for k, value in conditions.items()} | {"parameters": theta[inside]}
        out[inside] = np.asarray(self.approximator.log_prob(data=data), dtype=np.float64).reshape(-1)
        return out

    def refine(self, trace, current, n: int = 1000, seed: int = 0, **options):
        """The posterior of one trace (T,) V driven by current (T,) A, refined by importance sampling
        with the exact likelihood (lif_sbi.refine: a Refined with draws (n, 6) SI, the effective sample
        size and the residual check). Only for a set-up with an exact likelihood: the current observed,
        Gaussian noise and the "ordered" prior."""
        from .refine import refine

        return refine(self, trace, current, n=n, seed=seed, **options)


def load(run_dir) -> Posterior:
    """The posterior estimator of the finished run in `run_dir` (results/<run_id>)."""
    return Posterior(run_dir)
