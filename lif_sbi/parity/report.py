"""A parity run's report: parity.md (every check, the thresholds in force, the timings) and parity.json."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from ..files import atomic_write_text
from ..priors import INDEX, PARAMETERS
from .checks import _fmt
from .retraining import POWER_PARAMETER
from .run import ParityRun
from .thresholds import L1_N_TRACES, L1_N_Z, L1_SEED, LEVEL2, THRESHOLDS


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
        "| | |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in env.items()],
        "",
        *_method_lines(run),
        "",
        "| level | comparison | quantity | figure | threshold | result | note |",
        "|---|---|---|---|---|---|---|",
        *[c.row() for c in run.checks],
        "",
        *_power_lines(run),
        "Thresholds in force:",
        "",
        "```",
        *[f"{k} = {v}" for k, v in dataclasses.asdict(th).items()],
        *[f"level2.{k} = {v}" for k, v in run.info.get("level2_settings", dataclasses.asdict(LEVEL2[run.size])).items()],
        "```",
        "",
        "Timings (s): " + ", ".join(f"{k} {v}" for k, v in run.info["timings_s"].items()),
        "",
        *[f"Reused, not trained here (`--reuse`): {m} from {src}" for m, src in run.info.get("reused", {}).items()],
        *[f"Width factors of the {m} model (its calibration.json): " + ", ".join(f"{k} {v}" for k, v in f.items())
          for m, f in run.info.get("width_factors", {}).items()],
        "",
    ]


def _method_lines(run: ParityRun) -> list[str]:
    """What each level compares and, for level 2, exactly what is tested, in words."""
    k = run.info.get("seeds", LEVEL2[run.size].seeds)
    l2 = run.info.get("level2", {})
    return [
        "Level 1: each backend trains and saves the model; every backend loads every save and evaluates",
        f"{L1_N_TRACES} fixed traces (seed {L1_SEED}) with {L1_N_Z} fixed base draws z each, and the gradients of one",
        "training step on them (dropout off); `A → B` compares B's numbers for A's save against A's own.",
        "",
        f"Level 2 tests whether changing the backend changes the posterior more than retraining does. Under each",
        f"backend {k} models are trained that differ only in `training.seed` (the same data in the same order, each",
        "from its own initial weights, each with the width factors its own run fitted). Every pair of models draws",
        f"{run.config.diagnostics.n_draws} posterior draws per trace on the same {l2.get('test_traces', '')} fresh test traces,",
        "and each discrepancy of the pair is computed: the C2ST accuracy of a quadratic discriminant (mean over",
        f"{l2.get('c2st_traces', '')} traces) and, per parameter, the systematic shift of the posterior mean in posterior",
        "sds, the mean KS distance, |Δ r| (posterior mean vs truth), the systematic log ratio of posterior sds, and",
        "the KS distance between the two models' SBC rank distributions. The statistic is the mean over",
        "cross-backend pairs minus the mean over within-backend pairs; a hierarchical bootstrap (models within",
        "each backend and test traces, both drawn with replacement) gives its distribution. **equivalent**: the",
        "one-sided 95 % upper bound is below the discrepancy's margin (`lif_sbi.parity.thresholds.Level2`, with how",
        "each was chosen). **different**: the one-sided lower bound at α = 0.05 / (number of discrepancies) is above",
        "0 (cross > within). Otherwise **inconclusive**, with the K that would likely decide it. The permutation",
        "p-value over the models' backend labels is shown beside it. The run passes when every discrepancy is",
        "equivalent and the power checks below fail to find equivalence where there is a difference.",
        "",
        "Level 3: simulator CPU vs CUDA.",
    ]


def _power_lines(run: ParityRun) -> list[str]:
    """Power: the verdicts for synthetic shifts of one backend's draws, and negative control (a)."""
    l2 = run.info.get("level2", {})
    power = l2.get("power")
    if not power:
        return []
    shifts = list(next(iter(power.values())))
    lines = ["Power: the second backend's draws of one parameter moved by s pooled posterior sds; each cell is the",
             f"number of discrepancies (of {len(l2['verdicts'])}) not equivalent / reported different.", "",
             "| parameter | " + " | ".join(f"s = {s}" for s in shifts) + " |", "|---|" + "---|" * len(shifts),
             *[f"| {p} | " + " | ".join(f"{r['not_equivalent']} / {r['different']}" for r in res.values()) + " |" for p, res in power.items()],
             ""]
    ctrl = l2.get("negative_control")
    if ctrl:
        counts = {v: sum(x["verdict"] == v for x in ctrl["verdicts"]) for v in ("equivalent", "inconclusive", "different")}
        ((name, by),) = ctrl["prior_moved"].items()
        unit = PARAMETERS[INDEX[name]].display_unit
        lines += [f"Negative control (a): {run.backends[0]}'s models against {run.info['seeds']} trained on a simulator whose {name}",
                  f"prior is moved up by {by:g} {unit} (the test traces stay the reference's): posterior means moved by "
                  + ", ".join(f"{p} {_fmt(x)}" for p, x in ctrl["posterior_moved_sd"].items()) + " posterior sds; verdicts: "
                  + ", ".join(f"{n} {v}" for v, n in counts.items()) + ".",
                  "Different by: " + (", ".join(f"{x['discrepancy']} ({_fmt(x['cross_minus_within'])})" for x in ctrl["verdicts"]
                                                if x["verdict"] == "different") or "none") + ".", ""]
    lines += [f"(The power check that decides the run uses {POWER_PARAMETER} at s = 0.25.)", ""]
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
