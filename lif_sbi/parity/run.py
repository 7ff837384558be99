"""One parity run: its folder, its fixed inputs, the trainings, then levels 1, 2 and 3 in turn."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import calibration
from ..config import RESULTS_DIR, Config, ConfigError, DiagnosticsConfig, load_config, resolved
from ..priors import DISPLAY_SCALE, INDEX, N_PARAMS, PARAM_NAMES, REFERENCE_HIGH, REFERENCE_LOW
from .checks import Check
from .retraining import draw_all, level2
from .same_weights import compare_everywhere, evaluate_everywhere
from .simulator import level3
from .thresholds import L1_N_TRACES, L1_N_Z, L1_SEED, LEVEL2, THRESHOLDS, Level2, size_of
from .workers import ParityError, installed_backends, train

#: label → (the backend a model trains and runs under, its configuration overrides)
Variants = dict[str, tuple[str, list[str]]]


@dataclass
class ParityRun:
    run_dir: Path
    config: Config
    size: str
    backends: list[str]
    models: dict[str, Path]
    evals: dict[tuple[str, str], Path]  # (model's backend, evaluating backend) → npz
    checks: list[Check]
    info: dict

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


def new_run_dir(results_dir: Path, config: Config) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    results_dir.mkdir(parents=True, exist_ok=True)
    for k in range(1, 1000):
        d = results_dir / (f"parity_{config.name}_{stamp}" + ("" if k == 1 else f"_{k}"))
        try:
            d.mkdir()
            return d
        except FileExistsError:
            continue
    raise ParityError(f"could not create a run folder under {results_dir}")


def run_parity(config_name: str = "ci", overrides: list[str] = (), results_dir: Path = RESULTS_DIR, *,
               backends: list[str] | None = None, say=print, seeds: int | None = None,
               negative_control: bool = False, reuse: Path | None = None) -> ParityRun:
    """Levels 1-3 for every backend. Level 1 uses each backend's first model; level 2 trains
    `seeds` models per backend (LEVEL2[size].seeds by default) that differ only in training.seed,
    each from its own initial weights, and tests whether changing the backend changes the
    posterior more than retraining does (`equivalence`). negative_control: also K models under the
    first backend with `Level2.control_parameter`'s prior moved up by `Level2.control_prior_shift`
    (`control_bounds`), which the test must not report equivalent. reuse: an earlier parity run's
    folder whose models are taken as they are where one was trained under the same backend with
    exactly the configuration this run would train (`reusable`), so that K can be raised without
    retraining the models already made."""
    config = load_config(config_name, list(overrides))
    size = size_of(config)
    th, lv = THRESHOLDS[size], LEVEL2[size]
    if seeds is not None:
        lv = dataclasses.replace(lv, seeds=seeds)
    backends = backends or installed_backends()
    variants = _variants(config, list(overrides), backends, lv, negative_control)
    run_dir = new_run_dir(Path(results_dir), config)
    info: dict = {"timings_s": {}, "seeds": lv.seeds, "negative_control": negative_control}
    say(f"parity run folder: {run_dir}  ({len(variants)} models: {lv.seeds} per backend"
        + (f", {lv.seeds} on a shifted simulator" if negative_control else "") + ")")
    diag = config.diagnostics
    _write_fixed_inputs(run_dir, diag, lv)
    t_all = time.perf_counter()
    models = _train_models(config_name, config, variants, run_dir, info, say, reuse)
    info["timings_s"]["all trainings"] = round(time.perf_counter() - t_all, 1)
    firsts = {b: variants[b] for b in backends}
    evals, checks = evaluate_everywhere(run_dir, backends, firsts, models, diag.seed, diag.n_draws, th, info, say)
    checks += compare_everywhere(evals, backends, firsts, th)
    draws = draw_all(run_dir, {m: b for m, (b, _) in variants.items()}, models, diag.n_draws, diag.seed, info, say)
    groups = {m: b for m, (b, _) in variants.items() if "_shifted" not in m}
    shifted = {m: d for m, d in draws.items() if "_shifted" in m}
    checks += level2(run_dir, {m: draws[m] for m in groups}, groups, lv, info, say, shifted or None)
    checks += level3(th)
    info["thresholds"] = dataclasses.asdict(th)
    info["level2_settings"] = dataclasses.asdict(lv)
    return ParityRun(run_dir, config, size, list(backends), models, evals, checks, info)


def _variants(config: Config, overrides: list[str], backends: list[str], lv: Level2, negative_control: bool) -> Variants:
    """The models to train: label → (backend, overrides). Each backend's first model is labelled by
    the backend's name (level 1 uses it), the others `<backend>_seed<s>`; the negative control's
    `<backend>_shifted_seed<s>` (first backend, one prior moved: `control_bounds`)."""
    s0 = config.training.seed
    out: Variants = {}
    for b in backends:
        for k in range(lv.seeds):
            out[b if k == 0 else f"{b}_seed{s0 + k}"] = (b, overrides + [f"training.seed={s0 + k}"])
    if negative_control:
        moved = [f"prior.{lv.control_parameter}={list(control_bounds(config, lv))!r}"]
        for k in range(lv.seeds):
            out[f"{backends[0]}_shifted_seed{s0 + k}"] = (backends[0], overrides + [f"training.seed={s0 + k}"] + moved)
    return out


def control_bounds(config: Config, lv: Level2) -> tuple[float, float]:
    """Negative control (a)'s prior bounds of `lv.control_parameter`, display units: the
    configuration's (or the reference's) moved up by `lv.control_prior_shift`."""
    i = INDEX[lv.control_parameter]
    lo, hi = config.prior.bounds().get(lv.control_parameter) or (REFERENCE_LOW[i] * DISPLAY_SCALE[i], REFERENCE_HIGH[i] * DISPLAY_SCALE[i])
    return (round(float(lo) + lv.control_prior_shift, 9), round(float(hi) + lv.control_prior_shift, 9))


def _write_fixed_inputs(run_dir: Path, diag: DiagnosticsConfig, lv: Level2) -> int:
    """Level 1's fixed batch and base draws, and level 2's fresh test traces (not the training
    data nor train's own test set), as .npz files in the run folder; returns the test size."""
    from ..dataset import simulate_dataset

    batch = simulate_dataset(L1_N_TRACES, L1_SEED, progress=False)
    z = np.random.default_rng(L1_SEED).standard_normal((L1_N_TRACES, L1_N_Z, N_PARAMS)).astype(np.float32)
    np.savez(run_dir / "level1_batch.npz", observables=batch["observables"], parameters=batch["parameters"], z=z)
    n_test = max(diag.n_test, lv.n_c2st)
    test = simulate_dataset(n_test, diag.seed + 1, progress=False)
    np.savez(run_dir / "level2_test.npz", parameters=test["parameters"], observables=test["observables"])
    return n_test


def _train_models(config_name: str, config: Config, variants: Variants, run_dir: Path, info: dict, say,
                  reuse: Path | None) -> dict[str, Path]:
    """Train every model, each from its own initial weights, or copy it from `reuse` where that
    holds it (`reusable`); returns each model.keras."""
    models = {}
    for m, (b, ov) in variants.items():
        t0 = time.perf_counter()
        earlier = reusable(reuse, m, b, config_name, ov) if reuse is not None else None
        if earlier is not None:
            say(f"reusing {m} from {earlier}")
            copy = run_dir / "models" / m / earlier.name
            shutil.copytree(earlier, copy, ignore=shutil.ignore_patterns("checkpoints"))
            models[m] = copy / "model.keras"
            info.setdefault("reused", {})[m] = str(earlier)
        else:
            say(f"training '{config.name}' under {b}{'' if m == b else f' ({m})'} ...")
            models[m] = train(b, config_name, ov, run_dir / "models" / m) / "model.keras"
            info["timings_s"][f"train {m}"] = round(time.perf_counter() - t0, 1)
        factors = calibration.load_for(models[m])
        if factors is not None:
            info.setdefault("width_factors", {})[m] = dict(zip(PARAM_NAMES, calibration.describe_each(factors)))
    return models


def reusable(parity_dir: Path, label: str, backend: str, config_name: str, overrides: list[str]) -> Path | None:
    """An earlier parity run's model `label` (its run folder under models/<label>/) when it was
    trained under `backend` with exactly the configuration this run would train (its config.toml
    read back equals `config_name` with `overrides`, resolved as a run resolves it); else None."""
    want = resolved(load_config(config_name, list(overrides)))
    for saved in sorted((Path(parity_dir) / "models" / label).glob("*/model.keras")):
        folder = saved.parent
        try:
            backend_of = json.loads((folder / "environment.json").read_text()).get("keras_backend")
            if backend_of == backend and load_config(str(folder / "config.toml")) == want:
                return folder
        except (OSError, ValueError, ConfigError):  # an unfinished or foreign folder: not reused
            continue
    return None
