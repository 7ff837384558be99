"""The command line: `python -m lif_sbi.parity [--config NAME] ...`, its argument checks and exit codes."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..config import RESULTS_DIR, ConfigError, available_configs, load_config
from ..errors import EXIT_ENVIRONMENT, EnvironmentFault, os_error_line
from .report import write_report
from .run import run_parity
from .workers import ParityError, installed_backends, worker_main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lif_sbi.parity",
                                description="Check that every installed Keras backend gives the same answers; writes results/<run_id>/parity.md.")
    p.add_argument("--config", default="ci", help=f"configuration name ({', '.join(available_configs())}) or .toml path (default: ci)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override one configuration value; repeatable")
    p.add_argument("--results-dir", default=str(RESULTS_DIR), help="where the run folder is created (default: results/)")
    p.add_argument("--backends", nargs="+", metavar="BACKEND", default=None,
                   help="compare only these installed backends (at least two; default: every installed one)")
    p.add_argument("--seeds", type=int, default=None, metavar="K",
                   help="models trained per backend for level 2, differing only in training.seed (default: 5; 2 at ci size)")
    p.add_argument("--negative-control", action="store_true",
                   help="also train K models under the first backend on a simulator with C_m's prior moved up by 10 pF, "
                        "which level 2 must not report equivalent")

    p.add_argument("--reuse", metavar="PARITY_DIR", default=None,
                   help="an earlier parity run's folder: its models are taken as they are wherever one was trained under the "
                        "same backend with exactly the configuration this run would train (raise --seeds without retraining)")

    def error(message):
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)

    p.error = error
    return p.parse_args(argv)


def main(argv=None) -> int:
    """Exit code 0 when every check passes, 1 when any fails or a step cannot be carried out, 2 for
    bad arguments, 4 for the environment (a file that cannot be written or read: one line naming it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _main(argv)
    except EnvironmentFault as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    except OSError as exc:  # the parity run's own files, or a worker's
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        return EXIT_ENVIRONMENT


def _main(argv: list[str]) -> int:
    if argv[:1] == ["_worker"]:
        print(json.dumps(worker_main(argv[1], json.loads(argv[2]))), flush=True)
        return 0
    args = parse_args(argv)
    _prepare_config_imports()
    problem = _argument_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        run = run_parity(args.config, args.overrides, Path(args.results_dir), seeds=args.seeds, negative_control=args.negative_control,
                         backends=None if args.backends is None else list(dict.fromkeys(args.backends)),
                         reuse=None if args.reuse is None else Path(args.reuse))
    except ParityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    path = write_report(run)
    for c in run.checks:
        if not c.passed:
            print(f"FAIL level {c.level} {c.comparison}: {c.quantity} = {c.figure} (threshold {c.op} {c.threshold}) {c.note}")
    print(f"{'PASS' if run.passed else 'FAIL'}: {sum(c.passed for c in run.checks)}/{len(run.checks)} checks; report: {path}")
    return 0 if run.passed else 1


def _prepare_config_imports() -> None:
    """Validating a configuration imports lif_sbi.networks (Keras) in this process too; make that the
    first installed backend (torch before TensorFlow) rather than Keras' default. Workers set their own."""
    from .. import quiet

    quiet.libraries()
    if installed_backends():
        os.environ.setdefault("KERAS_BACKEND", installed_backends()[0])
        if "torch" in installed_backends():
            import torch  # noqa: F401


def _argument_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments, in one line, or None."""
    try:
        load_config(args.config, args.overrides)
    except ConfigError as exc:
        return str(exc)
    results = Path(args.results_dir)
    if results.exists() and not results.is_dir():
        return f"--results-dir {args.results_dir!r} is not a folder"
    if not installed_backends():
        return "no Keras backend (torch, tensorflow, jax) is installed"
    if args.reuse is not None and not (Path(args.reuse) / "models").is_dir():
        return f"--reuse {args.reuse!r}: not a parity run folder (it has no models/ folder)"
    if args.seeds is not None and args.seeds < 2:
        return f"--seeds {args.seeds}: expected at least 2 models per backend (within-backend pairs are the yardstick)"
    if args.backends is not None:
        unknown = [b for b in args.backends if b not in installed_backends()]
        if unknown or len(set(args.backends)) < 2:
            why = f"{unknown[0]!r} is not an installed Keras backend" if unknown else "needs two different backends"
            return f"--backends {' '.join(args.backends)}: {why}; installed: {', '.join(installed_backends())}"
    return None
