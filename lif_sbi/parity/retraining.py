"""Level 2, independent training → equivalent posteriors: K trainings per backend drawn on the same fresh test traces, the equivalence test, its power and its negative control."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from ..priors import PARAM_NAMES
from . import equivalence
from .checks import Check, _fmt
from .thresholds import Level2
from .workers import run_worker

POWER_PARAMETER = "C_m"  # the parameter negative control (a) moves; the power scan covers all six

# ---------------------------------------------------------------------------------------------
# Parent side (NumPy only)


def draw_all(run_dir: Path, labels: dict[str, str], models: dict[str, Path], n_draws: int, seed: int, info: dict,
             say) -> dict[str, np.ndarray]:
    """Every model's posterior draws (T, S, 6) SI on the level-2 test traces, one worker per
    backend drawing for all its models (as `lif_sbi.load` draws). labels: label → its backend."""
    todo: dict[str, list[str]] = {}
    for m, b in labels.items():
        todo.setdefault(b, []).append(m)
    paths: dict[str, Path] = {}
    for b, ms in todo.items():
        t0 = time.perf_counter()
        say(f"level 2: posterior draws of {len(ms)} {b} model(s) ...")
        outs = {m: str(run_dir / f"draws_{m}.npz") for m in ms}
        run_worker(b, "draws", {"models": {m: str(models[m]) for m in ms}, "test": str(run_dir / "level2_test.npz"),
                                "n_draws": n_draws, "seed": seed, "out": outs})
        paths |= {m: Path(p) for m, p in outs.items()}
        info["timings_s"][f"draws under {b}"] = round(time.perf_counter() - t0, 1)
    out = {}
    for m in labels:
        with np.load(paths[m]) as f:
            out[m] = f["posterior_draws"]
    return out


def level2(run_dir: Path, draws: dict[str, np.ndarray], groups: dict[str, str], lv: Level2, info: dict, say,
           shifted: dict[str, np.ndarray] | None = None) -> list[Check]:
    """The equivalence test between the backends' models (`groups`: label → backend), its power
    (a synthetic shift of the second backend's draws) and, with `shifted` (label → draws of models
    trained on a shifted simulator under the first backend), negative control (a)."""
    with np.load(run_dir / "level2_test.npz") as f:
        theta = f["parameters"].astype(np.float64)
    backends = list(dict.fromkeys(groups.values()))
    if len(backends) < 2:
        return [Check(2, "—", "skipped: only one Keras backend installed", None, None, "", True)]
    t0 = time.perf_counter()
    say(f"level 2: every pair of {len(draws)} models, equivalence test ...")
    cache: dict = {}
    table = equivalence.pair_table(draws, groups, theta, n_c2st=lv.n_c2st, cache=cache)
    found = equivalence.verdicts(table, lv.margins(), n_boot=lv.n_boot, alpha=lv.alpha, seed=1)
    comparison = " vs ".join(backends)
    checks = [_check(comparison, v) for v in found]
    info["level2"] = {"verdicts": [dataclasses.asdict(v) for v in found], "models": dict(groups),
                      "test_traces": len(theta), "c2st_traces": min(lv.n_c2st, len(theta))}
    info["timings_s"]["level 2 test"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    say("level 2: power (shifted draws) ...")
    power = _power(draws, groups, theta, lv, {k: v for k, v in cache.items() if groups[k[0]] == groups[k[1]]})
    info["level2"]["power"] = power
    checks.append(_power_check(comparison, power))
    info["timings_s"]["level 2 power"] = round(time.perf_counter() - t0, 1)
    if shifted:
        say("level 2: negative control (a) ...")
        first = {m: d for m, d in draws.items() if groups[m] == backends[0]}
        ctrl = {**first, **shifted}
        ctrl_groups = {m: groups[m] for m in first} | {m: "shifted simulator" for m in shifted}
        ctrl_table = equivalence.pair_table(ctrl, ctrl_groups, theta, n_c2st=lv.n_c2st)
        ctrl_found = equivalence.verdicts(ctrl_table, lv.margins(), n_boot=lv.n_boot, alpha=lv.alpha, seed=2)
        moved = _moved(first, shifted)
        info["level2"]["negative_control"] = {"verdicts": [dataclasses.asdict(v) for v in ctrl_found], "posterior_moved_sd": moved,
                                              "prior_moved": {lv.control_parameter: lv.control_prior_shift}}
        n_eq = sum(v.verdict == "equivalent" for v in ctrl_found)
        checks.append(Check(2, f"{backends[0]} vs {backends[0]} on a shifted simulator", "negative control (a): reported NOT equivalent",
                            float(len(ctrl_found) - n_eq), 0.0, ">", n_eq < len(ctrl_found),
                            f"{sum(v.verdict == 'different' for v in ctrl_found)} different, {len(ctrl_found) - n_eq} not equivalent; "
                            "posterior means moved by " + ", ".join(f"{p} {_fmt(x)}" for p, x in moved.items()) + " sd"))
    return checks


def _check(comparison: str, v: equivalence.Verdict) -> Check:
    note = (f"estimate {_fmt(v.cross_minus_within)}, lower bound {_fmt(v.lower)}, permutation p {_fmt(v.permutation_p)}: "
            f"{v.verdict}" + (f" ({v.note})" if v.note else ""))
    return Check(2, comparison, f"{v.discrepancy}: cross − within, 95 % upper bound", v.upper95, v.margin, "<",
                 v.verdict == "equivalent", note)


def _power(draws, groups, theta, lv: Level2, within_cache: dict) -> dict:
    """For each parameter and shift (in pooled posterior sds): the verdicts when the second
    backend's draws of that parameter are moved by it. Returns {parameter: {shift: summary}}."""
    second = list(dict.fromkeys(groups.values()))[1]
    out: dict = {}
    for j, p in enumerate(PARAM_NAMES):
        sd = equivalence.pooled_sd(draws, j)
        out[p] = {}
        for s in lv.power_shifts:
            moved = {m: (equivalence.shifted(d, j, s, sd) if groups[m] == second else d) for m, d in draws.items()}
            table = equivalence.pair_table(moved, groups, theta, n_c2st=lv.n_c2st, cache=dict(within_cache))
            found = equivalence.verdicts(table, lv.margins(), n_boot=lv.power_boot, alpha=lv.alpha, seed=3)
            out[p][str(s)] = {"not_equivalent": sum(v.verdict != "equivalent" for v in found),
                              "different": sum(v.verdict == "different" for v in found),
                              "different_by": [v.discrepancy for v in found if v.verdict == "different"]}
    return out


def _power_check(comparison: str, power: dict) -> Check:
    """Passes when a 0.25-sd shift of POWER_PARAMETER is not reported equivalent; the note gives,
    per parameter, the smallest shift reported different."""
    at = power[POWER_PARAMETER].get("0.25") or next(iter(power[POWER_PARAMETER].values()))
    smallest = {p: next((float(s) for s, r in res.items() if r["different"]), None) for p, res in power.items()}
    note = "smallest shift reported different: " + ", ".join(f"{p} {'none' if s is None else f'{s:g} sd'}" for p, s in smallest.items())
    return Check(2, comparison, f"power: {POWER_PARAMETER}'s draws of one backend moved by 0.25 sd, reported NOT equivalent",
                 float(at["not_equivalent"]), 0.0, ">", at["not_equivalent"] > 0, note)


def _moved(first: dict, shifted: dict) -> dict[str, float]:
    """How far the shifted simulator's models moved the posterior means, per parameter: the mean
    over traces of (mean of its models' posterior means − the first backend's) / pooled sd."""
    a = np.mean([d.mean(axis=1) for d in first.values()], axis=0)
    b = np.mean([d.mean(axis=1) for d in shifted.values()], axis=0)
    sd = np.sqrt(np.mean([d.var(axis=1) for d in [*first.values(), *shifted.values()]], axis=0))
    return {p: float(np.mean((b[:, j] - a[:, j]) / sd[:, j])) for j, p in enumerate(PARAM_NAMES)}


# ---------------------------------------------------------------------------------------------
# Worker side (imports Keras)


def task_draws(args: dict) -> dict:
    """Worker task `draws`: each model's posterior draws on the test traces, as its own run draws
    them (its width factors, its prior box: `lif_sbi.load`), saved to args["out"][label]."""
    from ..posterior import load

    with np.load(args["test"]) as f:
        obs = f["observables"][:, :, 0]  # (T, 501) V
    times = {}
    for m, path in args["models"].items():
        t0 = time.perf_counter()
        post = load(Path(path).parent)
        np.savez(args["out"][m], posterior_draws=post.sample(obs, int(args["n_draws"]), seed=int(args["seed"])))
        times[m] = round(time.perf_counter() - t0, 2)
    return {"seconds": times}
