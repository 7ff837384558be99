"""`python -m lif_sbi.train`: simulate, train the posterior estimator, diagnose, and report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import quiet
from .config import RESULTS_DIR, Config, ConfigError, available_configs, from_dict, load_config
from .errors import EXIT_ENVIRONMENT, EXIT_INPUT, EnvironmentFault, keras_backend


class UsageError(Exception):
    """Bad input from the command line: reported as one line, exit code 2."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m lif_sbi.train",
        description="Train the amortised LIF posterior estimator and write results/<run_id>/. "
        "The Keras backend is picked by KERAS_BACKEND (torch, tensorflow or jax).",
    )
    p.add_argument("--config", default="default", help=f"configuration name ({', '.join(available_configs())}) or path to a .toml file (default: default)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override one configuration value; repeatable (e.g. --set training.epochs=20)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run in its own folder, from its last checkpoint")
    p.add_argument("--results-dir", default=str(RESULTS_DIR), help="where run folders are created (default: results/)")
    p.add_argument("--quiet", action="store_true", help="print only the final summary")

    def error(message):  # argparse's own errors: one line, exit code 2
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)

    p.error = error
    return p.parse_args(argv)


def resolve(args) -> tuple[Config, Path | None]:
    """The run's configuration (validated) and, when resuming, its folder."""
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.toml").is_file():
            raise UsageError(f"--resume {args.resume!r}: not a run folder with a config.toml (expected results/<run_id>)")
        if (run_dir / "report.md").exists():
            raise UsageError(f"--resume {args.resume!r}: that run is complete (report.md exists); start a new run instead")
        if args.overrides:
            raise UsageError("--resume continues a run with its saved configuration; --set is not allowed with it")
        import tomllib

        try:
            saved = tomllib.loads((run_dir / "config.toml").read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"--resume {args.resume!r}: its config.toml is not valid TOML ({exc})") from None
        return from_dict(saved, source=str(run_dir / "config.toml")), run_dir
    results = Path(args.results_dir)
    if results.exists() and not results.is_dir():
        raise UsageError(f"--results-dir {args.results_dir!r} is a file: expected a folder (made if missing) for the run folders")
    return load_config(args.config, args.overrides), None


def main(argv=None) -> int:
    """Exit codes: 0 done; 2 bad input (arguments, configuration, run folder); 4 the environment
    (a file that cannot be written, no space, a Keras backend that is not installed); 130
    interrupted. Every error is one line on stderr."""
    args = parse_args(argv)
    quiet.libraries()
    try:
        config, run_dir = resolve(args)
        keras_backend()  # before Keras is imported: a bad or missing backend is one line, not 50
    except (ConfigError, UsageError, EnvironmentFault) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ENVIRONMENT if isinstance(exc, EnvironmentFault) else EXIT_INPUT
    with quiet.startup_lines():
        from . import runner  # heavy imports (Keras, BayesFlow) only after the input is known good

    try:
        return runner.run(config, run_dir=run_dir, results_dir=Path(args.results_dir), quiet=args.quiet)
    except KeyboardInterrupt:
        print("\ninterrupted: the last finished epoch is checkpointed; continue with --resume", file=sys.stderr)
        return 130
    except (runner.ResumeError, ConfigError, EnvironmentFault) as exc:  # ConfigError: e.g. data.device = "cuda" without a GPU
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ENVIRONMENT if isinstance(exc, EnvironmentFault) else EXIT_INPUT


if __name__ == "__main__":
    sys.exit(main())
