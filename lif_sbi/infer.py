"""`python -m lif_sbi.infer RUN_DIR FILE [FILE ...]`: the posterior of a trained run for your own recordings, with an honest verdict per trace.

Exit codes: 0 every trace has a valid posterior; 2 bad input (one line, nothing written); 3 some
trace is outside what the model was trained on ("no valid posterior"; the rest are answered).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from .errors import EXIT_ENVIRONMENT, EnvironmentFault, InputError, keras_backend, os_error_line
from .priors import INDEX, PARAMETERS

EXIT_INVALID = 3
MAX_ROUNDS = 2  # rounds of drawing again for draws outside the prior's support


def parse_sweeps(text: str | None) -> list[int] | None:
    """'0,3,5-7' → [0, 3, 5, 6, 7]; None → None (all sweeps)."""
    if text is None:
        return None
    out = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m or (m.group(2) and int(m.group(2)) < int(m.group(1))):
            raise InputError(f"--sweeps {text!r}: expected sweep numbers from 0, e.g. 0,3,5-7")
        out += list(range(int(m.group(1)), int(m.group(2) or m.group(1)) + 1))
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lif_sbi.infer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a finished run folder (results/<run_id>)")
    p.add_argument("files", nargs="+", help="recordings: .abf, .nwb, .npy, .npz, .csv or .txt")
    p.add_argument("--units", choices=("V", "mV"), help="voltage units of .npy/.npz/.csv/.txt files (default V; ABF and NWB carry theirs)")
    p.add_argument("--dt", type=float, help="sampling step in s of files without a time base (default: the model's)")
    p.add_argument("--time-units", choices=("s", "ms"), help="units of a time column (default: judged from its step, and said)")
    p.add_argument("--columns", help="what a table's columns hold, e.g. t,v,i or v (default: from its header or shape)")
    p.add_argument("--sweeps", help="ABF/NWB sweeps to infer, e.g. 0,3,5-7 (default all)")
    p.add_argument("--window", help="START:END in s of each recording to infer (the model's window length)")
    p.add_argument("--current", help="the injected current: a file laid out like the recordings (one per trace)")
    p.add_argument("--current-units", choices=("A", "nA", "pA"), default="A", help="units of --current or a current column (default A)")
    p.add_argument("--spikes", choices=("flag", "reset"), default="flag",
                   help="action potentials: flag a trace that has them (default), or map each onto the LIF's reset")
    p.add_argument("--refine", action="store_true",
                   help="refine each posterior by importance sampling with the exact likelihood (lif_sbi.refine; runs with a "
                        "known current, Gaussian noise and the ordered prior; seconds per trace)")
    p.add_argument("--draws", type=int, default=1000, help="posterior draws per trace (default 1000)")
    p.add_argument("--out", help="output folder (default RUN_DIR/inference/<first file's stem>)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--seed", type=int, default=0)

    def error(message):
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)

    p.error = error
    return p


def _check_args(args) -> None:
    from .posterior import finished_run

    run = Path(args.run)
    if run.is_file() and any(Path(f).is_dir() for f in args.files):
        raise InputError(f"arguments swapped: {args.run!r} is a file and {next(f for f in args.files if Path(f).is_dir())!r} a folder: "
                         "the run folder comes first (python -m lif_sbi.infer RUN_DIR FILE ...)")
    finished_run(run)
    if args.draws < 10:
        raise InputError(f"--draws {args.draws}: expected an integer >= 10")
    if args.dt is not None and not args.dt > 0:
        raise InputError(f"--dt {args.dt}: expected a positive step in s, e.g. 1e-4")
    for f in args.files:
        if Path(f).is_dir():
            raise InputError(f"{f}: is a folder: expected a recording file (.abf, .nwb, .npy, .npz, .csv, .txt)")


def read_all(args, grid, notes: list[str], needs_current: bool = False):
    """Every file's recordings onto the model's grid (`recordings.grid.Prepared`)."""
    from . import recordings
    from .recordings import grid as grids

    sweeps = parse_sweeps(args.sweeps)
    recs = []
    for f in args.files:
        recs += recordings.read(f, units=args.units, current_units=args.current_units, dt_s=args.dt, time_units=args.time_units,
                                sweeps=sweeps, columns=args.columns, notes=notes)
    if args.current:
        cur = recordings.read_current(args.current, current_units=args.current_units, dt_s=args.dt)
        if len(cur) != len(recs):
            raise InputError(f"--current {args.current}: holds {len(cur)} trace(s) for {len(recs)} recording(s): expected one per recording")
        for k, r in enumerate(recs):
            if len(cur[k]) != len(r.voltage_v):
                raise InputError(f"--current {args.current}: trace {k} has {len(cur[k])} samples, {r.name} {len(r.voltage_v)}: expected the same")
        recs = [dataclasses.replace(r, current_a=cur[k]) for k, r in enumerate(recs)]
    if needs_current and any(r.current_a is None for r in recs):
        raise InputError(f"the model in {args.run} observes the injected current (model.observe_current) and "
                         f"{next(r.name for r in recs if r.current_a is None)} has none: give it as the ABF/NWB command channel, "
                         "a current column (--columns t,v,i), or --current FILE")
    return grids.prepare(recs, grid, window=grids.parse_window(args.window), reset_spikes=args.spikes == "reset", notes=notes)


def _grid(config):
    from .recordings.grid import Grid

    st = config.stimulus
    return Grid(st.dt_s, st.n_samples, st.file_start_s if "file" in st.protocols else None)


def verdicts(post, prepared, draws, spikes_mode: str, seed: int = 0) -> tuple[np.ndarray, list[list[str]]]:
    """(valid (N,), reasons per trace): the run's validity check, and action potentials that were not mapped."""
    from . import validity

    stats = validity.statistics(post.check, post.approximator, prepared.voltage_v, prepared.current_a, post.dt_s, draws,
                                observe_current=post.observes_current, noise_sd_v=post.noise_sd_v, seed=seed)
    judged = validity.judge(post.check, stats)
    th = PARAMETERS[INDEX["V_th"]]
    reasons = []
    for n, (_, why) in enumerate(judged):
        if prepared.spike_counts[n] and spikes_mode == "flag" and prepared.spike_peak_v[n] > th.high:
            why = [f"{prepared.spike_counts[n]} action potential(s) peak at {prepared.spike_peak_v[n] * 1e3:.0f} mV, above V_th's prior "
                   f"({th.low * 1e3:g} to {th.high * 1e3:g} mV): an LIF has no spike waveform; pass --spikes reset to map each onto its reset"] + why
        reasons.append(why)
    return np.array([not r for r in reasons]), reasons


def _ppc(post, prepared, draws, valid, seed: int) -> list[dict]:
    from .diagnostics import posterior_predictive
    from .outputs import PPC_DRAWS, PPC_PANELS

    if prepared.current_a is None:
        return []  # without the recording's current the predictive would draw a new stimulus
    cases = []
    for n in range(min(len(draws), PPC_PANELS)):
        # the file's name is dropped from a sweep's or row's name: the figure is of one call's files
        short = prepared.names[n].rsplit(" ", 2)[-2:] if " " in prepared.names[n] else [prepared.names[n]]
        label = " ".join(short) + ("" if valid[n] else ": NO VALID POSTERIOR")
        cases.append(posterior_predictive(draws[n, :PPC_DRAWS], prepared.current_a[n], prepared.voltage_v[n], label=label,
                                          dt_s=post.dt_s, noise_sd_v=post.noise_sd_v, seed=seed + n))
    return cases


def _refine(post, prepared, draws, valid, reasons, seed: int) -> list[dict]:
    """Replace each valid trace's draws (in place) by its refined posterior (lif_sbi.refine); a trace
    whose refinement does not converge or whose residual the run's noise does not explain becomes
    invalid, with the reason. Returns what each refinement measured, for verdicts.json."""
    from .refine import MIN_ESS, RESIDUAL_RATIO_MAX, refine

    out = []
    t0 = time.perf_counter()
    for k in np.flatnonzero(valid):
        res = refine(post, prepared.voltage_v[k], prepared.current_a[k], n=draws.shape[1], seed=seed + int(k))
        draws[k] = res.draws
        out.append({"trace": prepared.names[k], "ess_flow": res.ess_flow, "n_flow": res.n_flow, "ess": res.ess, "n_proposal": res.n_proposal,
                    "rounds": res.rounds, "converged": res.converged, "residual_ratio": res.residual_ratio})
        if not res.converged:
            reasons[k].append(f"refining did not converge: {res.ess:.0f} effective draws of {res.n_proposal} after {res.rounds} rounds "
                              f"(needs {MIN_ESS})")
        if res.residual_ratio > RESIDUAL_RATIO_MAX:
            reasons[k].append(f"the best-fitting LIF leaves a residual of {res.residual_ratio:.2f} x the run's noise sd "
                              f"({post.noise_sd_v * 1e3:g} mV; at most {RESIDUAL_RATIO_MAX} expected): the model with that noise "
                              "does not explain this trace")
        valid[k] = not reasons[k]
    took = time.perf_counter() - t0
    if out:
        print(f"refined {len(out)} posterior(s) by importance sampling with the exact likelihood in {took:.1f} s "
              f"({took / len(out):.1f} s per trace); residual rms / noise sd: "
              + ", ".join(f"{r['residual_ratio']:.2f}" for r in out))
    return out


def main(argv=None) -> int:
    """Exit codes: 0 every trace has a posterior; 2 bad input; 3 some trace has no valid posterior;
    4 the environment (an output that cannot be written, a Keras backend that is not installed)."""
    try:
        return _main(argv)
    except (OSError, EnvironmentFault) as exc:  # the outputs are written whole or not at all (outputs.write)
        print(f"error: {os_error_line(exc) if isinstance(exc, OSError) else exc}", file=sys.stderr)
        return EXIT_ENVIRONMENT


def _main(argv) -> int:
    args = parser().parse_args(argv)
    notes: list[str] = []
    try:
        _check_args(args)
        keras_backend()
        from .posterior import run_config

        config = run_config(Path(args.run))
        if args.refine:
            from .refine import check_exact

            check_exact(config.model.observe_current, config.noise.sd_v, config.prior.kind)
        prepared = read_all(args, _grid(config), notes, needs_current=config.model.observe_current)
        out = Path(args.out) if args.out else Path(args.run) / "inference" / Path(args.files[0]).stem
        from .outputs import check_target

        check_target(out, args.force)
        from .posterior import load

        post = load(args.run)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from . import outputs

    if post.width_scale is not None:
        from . import calibration

        notes.append("posterior widths rescaled by the run's calibration.json: "
                     + ", ".join(f"{p.name} {d}" for p, d in zip(PARAMETERS, calibration.describe_each(post.width_scale))))
    for line in notes:
        print(f"note: {line}")
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:  # the sampler's notes on draws outside the prior: the verdicts say it
        warnings.simplefilter("always")
        # a trace whose draws mostly fall outside the prior is refused by the check anyway (its
        # draws pile on the bounds): two rounds of drawing again, not ten, keep the call fast
        draws = post.sample(prepared.voltage_v, args.draws, current=prepared.current_a, seed=args.seed, max_rounds=MAX_ROUNDS)
    elapsed = time.perf_counter() - t0
    # only lif_sbi's own words: a library's deprecation notes (NumPy 2's copy keyword) are not the user's business
    package = Path(__file__).resolve().parent
    notes += [f"sampling: {w.message}" for w in caught if Path(w.filename).resolve().is_relative_to(package)]
    valid, reasons = verdicts(post, prepared, draws, args.spikes, args.seed)  # on the flow's draws, as the check was fitted
    n = len(draws)
    print(f"{n} trace(s) x {args.draws} draws in {elapsed * 1e3:.0f} ms ({elapsed * 1e3 / n:.1f} ms per trace); validity check: "
          f"{post.check.record['false_alarm_rate']:.1%} false alarms on {post.check.record['check_traces']} held-out simulated traces")
    meta = {"run": str(args.run), "files": [str(f) for f in args.files], "draws": args.draws,
            "seed": args.seed, "spikes": args.spikes, "window": args.window, "dt_s": post.dt_s, "notes": notes,
            "seconds_per_trace": elapsed / n, "false_alarm_rate": post.check.record["false_alarm_rate"]}
    if args.refine:
        meta["refined"] = _refine(post, prepared, draws, valid, reasons, args.seed)
    inf = outputs.Inference(prepared.names, draws, valid, reasons, prepared.spike_counts, meta, _ppc(post, prepared, draws, valid, args.seed))
    print(outputs.table(inf), end="")
    files = outputs.write(out, inf, force=args.force)
    print(f"written to {out}/: {', '.join(files)}")
    if not valid.all():
        print(f"{int((~valid).sum())} of {n} trace(s) have no valid posterior (exit {EXIT_INVALID})")
        return EXIT_INVALID
    return 0


if __name__ == "__main__":
    sys.exit(main())
