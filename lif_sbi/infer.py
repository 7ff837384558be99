"""`python -m lif_sbi.infer`: posterior draws for your own recorded traces from a trained model."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .priors import PARAMETERS
from .stimulus import DT_S, N_SAMPLES


class InputError(Exception):
    """Bad input: one line, exit code 2."""


def read_traces(path: Path, *, units: str, n_samples: int = N_SAMPLES, dt_s: float = DT_S, what: str = "traces") -> np.ndarray:
    """Traces from .npy (N, T) / (T,) / (N, T, 1) or a CSV/TXT with one trace per row, T =
    `n_samples` (the model's window at `dt_s`).

    Returns (N, T) float64 in V. `units`: 'V' or 'mV' (what the file holds). what="current":
    injected currents in A instead ('A', 'pA' or 'nA').
    """
    if not path.is_file():
        raise InputError(f"{what} file {str(path)!r} does not exist")
    try:
        if path.suffix == ".npy":
            x = np.load(path, allow_pickle=False)
        elif path.suffix in (".csv", ".txt"):
            x = np.loadtxt(path, delimiter="," if path.suffix == ".csv" else None, ndmin=2)
        else:
            raise InputError(f"{what} file {str(path)!r}: expected a .npy, .csv or .txt file")
    except (ValueError, OSError) as exc:
        raise InputError(f"{what} file {str(path)!r} could not be read as numbers: {exc}") from None
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] != n_samples:
        raise InputError(
            f"{what} in {str(path)!r} have shape {np.shape(x)}: expected (N, {n_samples}), one trace of "
            f"{n_samples} samples at {dt_s * 1e3:g} ms per row (the model's window)"
        )
    if not np.isfinite(x).all():
        raise InputError(f"{what} in {str(path)!r} contain NaN or inf: expected finite values")
    if what == "current":
        return x * {"A": 1.0, "nA": 1e-9, "pA": 1e-12}[units]
    x = x * (1e-3 if units == "mV" else 1.0)
    if np.abs(x).max() > 1.0:
        raise InputError(f"traces in {str(path)!r} reach {np.abs(x).max():.3g} V: expected volts (or pass --units mV)")
    return x


def run_settings(model: Path):
    """The configuration of the run that trained `model` (its folder's config.toml; the defaults
    for a bare .keras file, which must then be a reference-window model)."""
    from .config import Config, ConfigError, load_config

    path = model.parent / "config.toml"
    if not path.is_file():
        return Config()
    try:
        return load_config(str(path))
    except ConfigError as exc:
        raise InputError(f"{path}: not a configuration this version reads ({exc})") from None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lif_sbi.infer", description=__doc__)
    p.add_argument("model", help="a run folder (results/<run_id>) or its model.keras")
    p.add_argument("traces", help=f".npy, .csv or .txt: N traces of {N_SAMPLES} samples (one per row)")
    p.add_argument("--units", choices=("V", "mV"), default="V", help="units of the traces file (default V)")
    p.add_argument("--current", help="the injected currents, one row per trace like the traces file: needed by a model "
                   "trained with model.observe_current")
    p.add_argument("--current-units", choices=("A", "nA", "pA"), default="A", help="units of the current file (default A)")
    p.add_argument("--draws", type=int, default=1000, help="posterior draws per trace (default 1000)")
    p.add_argument("--out", help="write all draws (N, draws, 6), SI units, to this .npz")
    p.add_argument("--seed", type=int, default=0)

    def error(message):
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)

    p.error = error
    args = p.parse_args(argv)
    model = Path(args.model)
    model = model / "model.keras" if model.is_dir() else model
    try:
        if args.draws < 1:
            raise InputError(f"--draws {args.draws}: expected a positive integer")
        if args.out and not Path(args.out).suffix == ".npz":
            raise InputError(f"--out {args.out!r}: expected a path ending in .npz")
        if not model.is_file() or model.suffix != ".keras":
            raise InputError(f"model {args.model!r}: expected a run folder holding model.keras, or a .keras file")
        run = run_settings(model)
        traces = read_traces(Path(args.traces), units=args.units, n_samples=run.stimulus.n_samples, dt_s=run.stimulus.dt_s)
        current = None
        if run.model.observe_current and not args.current:
            raise InputError(f"model {args.model!r} was trained with the injected current observed (model.observe_current): "
                             "pass --current FILE with one current row per trace")
        if args.current:
            current = read_traces(Path(args.current), units=args.current_units, n_samples=run.stimulus.n_samples,
                                  dt_s=run.stimulus.dt_s, what="current")
            if len(current) != len(traces):
                raise InputError(f"--current holds {len(current)} row(s) for {len(traces)} trace(s): expected one per trace")
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from . import quiet

    quiet.libraries()
    with quiet.startup_lines():
        from . import calibration, estimator

    approximator = estimator.load_approximator(model)
    width_scale = calibration.load_for(model)  # the run's calibration.json, if it fitted one
    if width_scale is not None:
        print("posterior widths rescaled by the run's calibration.json: "
              + ", ".join(f"{p.name} {d}" for p, d in zip(PARAMETERS, calibration.describe_each(width_scale))))
    t0 = time.perf_counter()
    draws = estimator.sample_posterior(approximator, traces, args.draws, seed=args.seed, width_scale=width_scale,
                                       current=current if run.model.observe_current else None, prior=run.prior.kind,
                                       dt_s=run.stimulus.dt_s)
    elapsed = time.perf_counter() - t0
    print(f"{len(traces)} trace(s) x {args.draws} draws in {elapsed * 1e3:.0f} ms")
    header = f"{'trace':>5} {'parameter':<7} {'mean':>10} {'sd':>9} {'5 %':>10} {'95 %':>10}  unit"
    print(header)
    for n in range(len(traces)):
        for i, prm in enumerate(PARAMETERS):
            d = prm.to_display(draws[n, :, i])
            q5, q95 = np.quantile(d, [0.05, 0.95])
            print(f"{n:>5} {prm.name:<7} {d.mean():>10.4g} {d.std():>9.3g} {q5:>10.4g} {q95:>10.4g}  {prm.display_unit}")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, suffix=".tmp.npz", delete=False) as tmp:
            np.savez(tmp, draws=draws, names=np.array([q.name for q in PARAMETERS]))
        os.replace(tmp.name, out)
        print(f"draws written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
