"""A parity run's report: parity.md (every check, the thresholds in force, the timings) and parity.json."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from ..files import atomic_write_text
from .checks import _fmt
from .retraining import ks_null_mean
from .run import ParityRun
from .thresholds import L1_N_TRACES, L1_N_Z, L1_SEED, THRESHOLDS


def write_report(run: ParityRun) -> Path:
    """Write parity.json and parity.md into the run folder; returns the path of parity.md."""
    lines = _report_lines(run)
    path = run.run_dir / "parity.md"
    # json.dumps as it is (not atomic_write_json): figures may be NaN and info may hold paths
    atomic_write_text(run.run_dir / "parity.json", json.dumps(
        {"passed": run.passed, "size": run.size, "backends": run.backends,
         "checks": [dataclasses.asdict(c) for c in run.checks], "info": run.info}, indent=2, default=str) + "\n")
    atomic_write_text(path, "\n".join(lines))
    return path


def _report_lines(run: ParityRun) -> list[str]:
    th = THRESHOLDS[run.size]
    fails = [c for c in run.checks if not c.passed]
    env = _environment(run)
    return [
        f"# Backend parity — `{run.config.name}`",
        "",
        f"**{'PASS' if not fails else f'FAIL ({len(fails)} of {len(run.checks)} checks)'}** — "
        f"backends: {', '.join(run.backends)}; thresholds: `{run.size}` (`lif_sbi.parity.THRESHOLDS`)",
        "",
        *([f"**Baseline run**: one backend, two trainings that differ only in `training.seed`; level 2 below is the",
           "seed-to-seed spread that the backend comparison's level-2 thresholds must allow.", ""]
          if run.info.get("baseline") else []),
        "| | |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in env.items()],
        "",
        *_method_lines(run),
        "",
        "| level | comparison | quantity | figure | threshold | result | note |",
        "|---|---|---|---|---|---|---|",
        *[c.row() for c in run.checks],
        "",
        *_separation_lines(run),
        "Thresholds in force:",
        "",
        "```",
        *[f"{k} = {v}" for k, v in dataclasses.asdict(th).items()],
        "```",
        "",
        "Timings (s): " + ", ".join(f"{k} {v}" for k, v in run.info["timings_s"].items()),
        "",
        *[f"Width factors of the {m} model (its calibration.json): " + ", ".join(f"{k} {v}" for k, v in f.items())
          for m, f in run.info.get("width_factors", {}).items()],
        "",
    ]


def _method_lines(run: ParityRun) -> list[str]:
    """What each level compares, in words."""
    return [
        "Level 1: each backend trains and saves the model; every backend loads every save and evaluates",
        f"{L1_N_TRACES} fixed traces (seed {L1_SEED}) with {L1_N_Z} fixed base draws z each, and the gradients of one",
        "training step on them (dropout off); `A → B` compares B's",
        "numbers for A's save against A's own. Level 2: the independently trained models' posteriors",
        f"({run.config.diagnostics.n_draws} draws, each model with the width factors its own run fitted, if any) on the",
        "same fresh test traces"
        + (f"; every backend trained from the initial weights {run.backends[0]}'s run started from (`training.initial_weights`)."
           if run.info.get("shared_init") else "; each model from its own random initial weights.")
        + " Level 3: simulator CPU vs CUDA.",
    ]


def _separation_lines(run: ParityRun) -> list[str]:
    """The per-parameter separation of each level-2 pair (`separation`): information, not a check."""
    lines = []
    n = run.config.diagnostics.n_draws
    for pair, res in run.info.get("level2", {}).get("pairs", {}).items():
        sep = res.get("separation")
        if not sep:
            continue
        a, b = pair.split("|")
        lines += [f"Where the posteriors of {a} and {b} differ, per parameter, on the {len(res['c2st'])} C2ST test traces",
                  f"(information, not a check; KS distance of identical posteriors ≈ {ks_null_mean(n, n):.3f}):", "",
                  "| parameter | mean KS distance | mean \\|Δ posterior mean\\| / posterior sd | median sd ratio |", "|---|---|---|---|",
                  *[f"| {p} | {_fmt(v['ks_mean'])} | {_fmt(v['mean_shift_sd'])} | {_fmt(v['sd_ratio_median'])} |" for p, v in sep.items()], ""]
    return lines


def _environment(run: ParityRun) -> dict:
    import platform

    env = {"configuration": f"{run.config.name} ({run.config.data.n_traces} traces, {run.config.training.epochs} epochs)",
           "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}"}
    for b in run.backends:
        envf = Path(run.models[b]).parent / "environment.json" if b in run.models else None
        if envf is not None and envf.exists():
            e = json.loads(envf.read_text())
            env[f"{b}"] = f"{e.get('backend_version', '')} on {e.get('device', '')} (Keras {e.get('keras')}, BayesFlow {e.get('bayesflow')})"
    return env
