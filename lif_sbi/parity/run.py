"""One parity run: its folder, its fixed inputs, the trainings, then levels 1, 2 and 3 in turn."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import calibration
from ..config import INITIAL_WEIGHTS, RESULTS_DIR, Config, DiagnosticsConfig, load_config
from ..priors import N_PARAMS, PARAM_NAMES
from .checks import Check
from .retraining import level2
from .same_weights import compare_everywhere, evaluate_everywhere
from .simulator import level3
from .thresholds import L1_N_TRACES, L1_N_Z, L1_SEED, THRESHOLDS, Thresholds, size_of
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
               backends: list[str] | None = None, say=print, c2st_splits: int | None = None,
               baseline: str | None = None, shared_init: bool = True) -> ParityRun:
    """Levels 1-3 for every backend; with `baseline` = a backend name, level 2 compares two trainings
    under that one backend that differ only in training.seed (the seed-to-seed spread the level-2
    thresholds must allow), and level 1 checks only each model's own save.

    shared_init: every backend after the first trains from the weights the first one started from
    (`training.initial_weights`), so that level 2 compares the backends' training rather than two
    random initialisations (Keras draws them from each backend's own random stream). False: each
    backend initialises from `training.seed` itself. The baseline's two seeds always start apart."""
    config = load_config(config_name, list(overrides))
    size = size_of(config)
    th = THRESHOLDS[size]
    backends, variants = _variants(config, list(overrides), backends, baseline)
    run_dir = new_run_dir(Path(results_dir), config)
    info: dict = {"timings_s": {}, "baseline": bool(baseline)}
    say(f"parity run folder: {run_dir}  (models: {', '.join(variants)}; thresholds: {size})")
    diag = config.diagnostics
    n_test = _write_fixed_inputs(run_dir, diag, th)
    shared_init = shared_init and not baseline and not config.training.initial_weights
    info["shared_init"] = shared_init
    models = _train_models(config_name, config, variants, run_dir, shared_init, info, say)
    evals, checks = evaluate_everywhere(run_dir, backends, variants, models, diag.seed, diag.n_draws, th, info, say)
    checks += compare_everywhere(evals, backends, variants, th)
    draws = {m: evals[(m, mb)] for m, (mb, _) in variants.items()}
    checks += level2(backends[0], run_dir / "level2_test.npz", draws, th, size, n_test, diag.n_draws, c2st_splits, info, say)
    checks += level3(th)
    info["thresholds"] = dataclasses.asdict(th)
    return ParityRun(run_dir, config, size, list(variants), models, evals, checks, info)


def _variants(config: Config, overrides: list[str], backends: list[str] | None,
              baseline: str | None) -> tuple[list[str], Variants]:
    """The backends that evaluate and the models to train: one per backend, or, with `baseline`,
    two under that backend with consecutive training seeds (the data, data.seed, is shared)."""
    if baseline:
        seed2 = config.training.seed + 1
        return [baseline], {baseline: (baseline, list(overrides)),
                            f"{baseline}_seed{seed2}": (baseline, list(overrides) + [f"training.seed={seed2}"])}
    backends = backends or installed_backends()
    return backends, {b: (b, list(overrides)) for b in backends}


def _write_fixed_inputs(run_dir: Path, diag: DiagnosticsConfig, th: Thresholds) -> int:
    """Level 1's fixed batch and base draws, and level 2's fresh test traces (not the training
    data nor train's own test set), as .npz files in the run folder; returns the test size."""
    from ..dataset import simulate_dataset

    batch = simulate_dataset(L1_N_TRACES, L1_SEED, progress=False)
    z = np.random.default_rng(L1_SEED).standard_normal((L1_N_TRACES, L1_N_Z, N_PARAMS)).astype(np.float32)
    np.savez(run_dir / "level1_batch.npz", observables=batch["observables"], parameters=batch["parameters"], z=z)
    n_test = max(diag.n_test, th.c2st_min_traces)
    test = simulate_dataset(n_test, diag.seed + 1, progress=False)
    np.savez(run_dir / "level2_test.npz", parameters=test["parameters"], observables=test["observables"])
    return n_test


def _train_models(config_name: str, config: Config, variants: Variants, run_dir: Path, shared_init: bool,
                  info: dict, say) -> dict[str, Path]:
    """Train every model (this is also level 2's independent training); returns each model.keras.
    With `shared_init`, every model after the first starts from the first one's initial weights."""
    models = {}
    start = []  # --set training.initial_weights=<the first model's start>, once it exists
    for m, (b, ov) in variants.items():
        t0 = time.perf_counter()
        say(f"training '{config.name}' under {b}{'' if m == b else f' ({m})'}{' from the same initial weights' if start else ''} ...")
        models[m] = train(b, config_name, ov + start, run_dir / "models" / m) / "model.keras"
        if shared_init and not start:
            start = [f"training.initial_weights={models[m].parent / INITIAL_WEIGHTS}"]
        info["timings_s"][f"train {m}"] = round(time.perf_counter() - t0, 1)
        factors = calibration.load_for(models[m])
        if factors is not None:
            info.setdefault("width_factors", {})[m] = dict(zip(PARAM_NAMES, calibration.describe_each(factors)))
    return models
