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


def read_traces(path: Path, *, units: str) -> np.ndarray:
    """Traces from .npy (N, 501) / (501,) / (N, 501, 1) or a CSV/TXT with one trace per row.

    Returns (N, 501) float64 in V. `units`: 'V' or 'mV' (what the file holds).
    """
    if not path.is_file():
        raise InputError(f"traces file {str(path)!r} does not exist")
    try:
        if path.suffix == ".npy":
            x = np.load(path, allow_pickle=False)
        elif path.suffix in (".csv", ".txt"):
            x = np.loadtxt(path, delimiter="," if path.suffix == ".csv" else None, ndmin=2)
        else:
            raise InputError(f"traces file {str(path)!r}: expected a .npy, .csv or .txt file")
    except (ValueError, OSError) as exc:
        raise InputError(f"traces file {str(path)!r} could not be read as numbers: {exc}") from None
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] != N_SAMPLES:
        raise InputError(
            f"traces in {str(path)!r} have shape {np.shape(x)}: expected (N, {N_SAMPLES}), one trace of "
            f"{N_SAMPLES} samples at {DT_S * 1e3:g} ms per row"
        )
    if not np.isfinite(x).all():
        raise InputError(f"traces in {str(path)!r} contain NaN or inf: expected finite voltages")
    x = x * (1e-3 if units == "mV" else 1.0)
    if np.abs(x).max() > 1.0:
        raise InputError(f"traces in {str(path)!r} reach {np.abs(x).max():.3g} V: expected volts (or pass --units mV)")
    return x


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lif_sbi.infer", description=__doc__)
    p.add_argument("model", help="a run folder (results/<run_id>) or its model.keras")
    p.add_argument("traces", help=f".npy, .csv or .txt: N traces of {N_SAMPLES} samples (one per row)")
    p.add_argument("--units", choices=("V", "mV"), default="V", help="units of the traces file (default V)")
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
        traces = read_traces(Path(args.traces), units=args.units)
        if not model.is_file() or model.suffix != ".keras":
            raise InputError(f"model {args.model!r}: expected a run folder holding model.keras, or a .keras file")
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
    draws = estimator.sample_posterior(approximator, traces, args.draws, seed=args.seed, width_scale=width_scale)
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
