"""One training run, end to end, as a pipeline of named stages: start → simulate → build → fit → calibrate → diagnose → report."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch  # noqa: F401  (the simulator's; import torch before TensorFlow when both load)
import keras
import numpy as np

from . import __version__, backends, batches, calibration, checkpoints, dataset, diagnostics, estimator, features, noise, online, priors, report, simulator, validity
from .checkpoints import CHECKPOINTS, ResumeError
from .config import INITIAL_WEIGHTS, Config, ConfigError, resolved
from .errors import EnvironmentFault, os_error_line
from .files import atomic_save_keras, atomic_write_json, atomic_write_text, remove_leftovers, remove_tree

CALIBRATION_TRACES = 1000  # validation traces the width factors are fitted on (at most)
CALIBRATION_DRAWS = 500  # posterior draws per such trace
PRIOR_FIGURE_TRACES = 2000  # training draws shown in the prior histograms and example traces
SPIKE_CHECK_TRACES = 100  # test traces of the spike-time posterior-predictive check
NOISE_SEED_OFFSET = 7919  # the recording noise's seeds: the data's (validation) or test traces' seed plus this
SIMULATE, BUILD, CALIBRATE, VALIDITY, DIAGNOSE = range(5)  # the stages that seed the global random streams (`_stage`)

__all__ = ["CALIBRATION_DRAWS", "CALIBRATION_TRACES", "EnvironmentFault", "ResumeError", "new_run_dir", "run", "validation_batch_size"]


@dataclasses.dataclass
class Run:
    """What the stages share: the resolved configuration, the run folder, the checkpoint being
    resumed (None for a new run), the wall times so far (timings.json) and the console printer."""

    config: Config
    run_dir: Path
    checkpoint: tuple[Path, dict] | None
    timings: dict
    say: Callable[..., None]
    quiet: bool
    started: float  # time.perf_counter() at the start of this process's part of the run


def run(config: Config, *, run_dir: Path | None, results_dir: Path, quiet: bool = False) -> int:
    """Train, calibrate, diagnose and report one configuration into a new folder under
    `results_dir`, or continue the interrupted run in `run_dir`. Returns the exit code (0, or 130
    when interrupted)."""
    r = start(config, run_dir=run_dir, results_dir=results_dir, quiet=quiet)
    try:
        train, val = simulate(r)
        approximator, train_ds, val_ds = build(r, train, val)
        rows, best = fit(r, approximator, train_ds, val_ds)
        width_scale = calibrate(r, approximator, val)
        check = fit_validity(r, approximator, width_scale)
        metrics, plots, history = diagnose(r, approximator, train, rows, width_scale)
        metrics["validity"] = {k: check.record[k] for k in ("false_alarm_rate", "check_traces")}
        write_records(r, approximator, metrics, plots, history)
    except KeyboardInterrupt:
        print(f"\ninterrupted: the last finished epoch is checkpointed; continue with --resume {r.run_dir}", file=sys.stderr)
        return 130
    except OSError as exc:  # every file is written whole or not at all (files.atomic_write): what was done is kept
        raise EnvironmentFault(f"{os_error_line(exc)}; the run so far is kept: once that is fixed, continue with "
                               f"--resume {r.run_dir}") from None
    print(report.console_summary(r.run_dir, metrics), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# Stages


def start(config: Config, *, run_dir: Path | None, results_dir: Path, quiet: bool) -> Run:
    """Resolve the configuration, seed every random stream, and open the run folder: a new one
    (config.toml and environment.json written first) or the one being resumed; this start is
    recorded in timings.json at once."""
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    started = time.perf_counter()
    config = resolved(config)  # before anything is written
    backends.set_seed(config.training.seed)
    priors.set_box(config.prior.bounds())
    if config.training.initial_weights and run_dir is None and not Path(config.training.initial_weights).is_file():
        raise ConfigError(f"training.initial_weights = {config.training.initial_weights!r}: no such file")
    resuming = run_dir is not None
    if resuming:
        remove_leftovers(run_dir)  # what a killed start was writing when it died
        checkpoint = checkpoints.load_checkpoint(run_dir / CHECKPOINTS)
        say(f"resuming {run_dir} " + (f"after epoch {checkpoint[1]['epoch']}" if checkpoint else "from its first epoch (no epoch was checkpointed)"))
    else:
        run_dir, checkpoint = _new_run(results_dir, config), None
        say(f"run folder: {run_dir}")
    timings = json.loads((run_dir / "timings.json").read_text()) if (run_dir / "timings.json").exists() else {}
    timings.setdefault("starts", []).append({
        "utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "kind": "resume" if resuming else "new",
        "after_epoch": checkpoint[1]["epoch"] if checkpoint else 0})
    try:
        atomic_write_json(run_dir / "timings.json", timings)
    except OSError as exc:
        if not resuming:
            remove_tree(run_dir)
        raise EnvironmentFault(os_error_line(exc)) from None
    return Run(config, run_dir, checkpoint, timings, say, quiet, started)


def _new_run(results_dir: Path, config: Config) -> Path:
    """A new run folder with its config.toml and environment.json; where the machine does not let
    them be written, nothing is left and EnvironmentFault says why in one line."""
    run_dir = None
    try:
        run_dir = new_run_dir(results_dir, config)
        atomic_write_text(run_dir / "config.toml", config.to_toml())
        atomic_write_json(run_dir / "environment.json", environment())
    except OSError as exc:
        if run_dir is not None:
            remove_tree(run_dir)
        raise EnvironmentFault(os_error_line(exc)) from None
    return run_dir


def simulate(r: Run) -> tuple[dict, dict]:
    """The training and validation traces: simulated, or loaded from the dataset cache."""
    _stage(r, SIMULATE)
    t0 = time.perf_counter()
    dc = r.config.data
    cache_dir = dataset.DEFAULT_CACHE_DIR if dc.cache else None
    data, cache_path, from_cache = dataset.load_or_simulate(dc.n_traces, dc.seed, device=dc.device, cache_dir=cache_dir, progress=not r.quiet,
                                                            stimulus_spec=r.config.stimulus, prior=r.config.prior.kind)
    train, val = dataset.split(data, dc.validation_fraction, dc.seed)
    # recording noise on the validation traces, fixed; the training traces get theirs fresh per draw (`build`)
    val["observables"] = noise.add_noise(val["observables"], r.config.noise.sd_v, seed=dc.seed + NOISE_SEED_OFFSET)
    r.timings.setdefault("simulation_s", round(time.perf_counter() - t0, 3))
    r.timings.setdefault("data_from_cache", from_cache)
    origin = (f"loaded from {cache_path}" if from_cache
              else f"simulated on {simulator.device_label(dc.device)} in {time.perf_counter() - t0:.1f} s"
              + (f", saved to {cache_path}" if cache_path else ", not cached (data.cache = false)"))
    r.say(f"data: {len(train['parameters'])} training / {len(val['parameters'])} validation traces ({origin})")
    return train, val


def build(r: Run, train: dict, val: dict):
    """The approximator (compiled, built, from its initial or checkpointed weights) and the
    training and validation datasets BayesFlow feeds it."""
    import bayesflow as bf

    _stage(r, BUILD)
    tc = r.config.training
    approximator = estimator.build_approximator(r.config.model)
    estimator.quiet_file_probe()  # before the first checkpoint save
    mc, dt_s = r.config.model, r.config.stimulus.dt_s
    keys = ("parameters", "observables", "current") if mc.observe_current else ("parameters", "observables")
    # per training batch: fresh recording noise, then the features of the noisy traces
    fresh = noise.FreshNoise(r.config.noise.sd_v, seed=tc.seed + NOISE_SEED_OFFSET) if r.config.noise.sd_v else None
    # the batches are the data's (data.seed): two runs that differ only in training.seed see the same batches
    scales = mc.leak_scales if mc.leak_features else 0
    augment = [features.WithFeatures(dt_s, scales, mc.spike_features)] if scales or mc.spike_features else []
    dc = r.config.data
    if dc.mode == "online":
        train_ds = online.OnlineBatches(len(train["parameters"]), tc.batch_size, approximator.adapter, seed=dc.seed, keys=keys,
                                        stimulus=r.config.stimulus, prior=r.config.prior.kind, device=dc.device, noise=fresh,
                                        augmentations=augment)
        r.say(f"data: online, a freshly simulated batch of {tc.batch_size} per step ({len(train_ds)} steps an epoch); "
              f"the {len(val['parameters'])} validation traces stay fixed")
    else:
        train_ds = batches.Batches({k: train[k] for k in keys}, tc.batch_size, approximator.adapter, seed=dc.seed, noise=fresh,
                                   augmentations=augment)
    val_data = {k: val[k] for k in keys}
    if scales or mc.spike_features:
        val_data = features.add_features(val_data, dt_s, scales, mc.spike_features)
    val_ds = bf.datasets.OfflineDataset(val_data, batch_size=validation_batch_size(len(val["parameters"]), tc.batch_size),
                                        adapter=approximator.adapter, shuffle=False)
    approximator.compile(optimizer=keras.optimizers.Adam(_learning_rate(tc, len(train_ds))), jit_compile=tc.jit_compile)
    approximator.build_from_data(train_ds[0])
    if r.checkpoint is None:
        _start_weights(r, approximator)
    else:
        _restore_checkpoint(r, approximator)
    return approximator, train_ds, val_ds


def fit(r: Run, approximator, train_ds, val_ds) -> tuple[list[dict], float]:
    """Train up to `training.epochs` epochs (from the checkpoint when resuming), checkpointing
    every epoch; then load the best epoch's weights and save model.keras. Returns the history
    rows and the best validation loss."""
    tc = r.config.training
    rows, best, start_epoch, finished, cb_state = _resume_point(r)
    early = checkpoints.ResumableEarlyStopping(
        monitor="val_loss", patience=tc.early_stopping_patience, mode="min",
        restore_best_weights=False,  # the best epoch's weights are loaded from best.weights.npz after fit
        resume_state=cb_state.get("ResumableEarlyStopping"),
    )
    plateau = checkpoints.ResumableReduceLROnPlateau(
        monitor="val_loss", factor=tc.lr_plateau_factor, patience=tc.lr_plateau_patience,
        min_lr=tc.min_learning_rate, mode="min", resume_state=cb_state.get("ResumableReduceLROnPlateau"),
    )
    recorder = checkpoints.EpochRecorder(r.run_dir, tc.epochs, rows, best, [early, plateau], r.quiet)
    if "training_s" not in r.timings and rows:
        # resuming a run killed during training: its earlier starts' training time is the sum of
        # their epochs' wall seconds in the history (timings.json's is written after training)
        r.timings["training_s"] = r.timings["total_s"] = round(sum(row["wall_s"] for row in rows), 3)
    t0 = time.perf_counter()
    if not finished and start_epoch < tc.epochs:
        backends.prepare_training(approximator, record_steps=tc.record_steps, compile_steps=tc.compile_steps,
                                  state=r.checkpoint[1].get("steps") if r.checkpoint else None)
        r.say(f"training under Keras backend '{backends.name}' on {backends.device_name()} "
              f"(training step: {backends.training_step_kind(approximator)}): up to {tc.epochs} epochs")
        approximator.fit(
            dataset=train_ds, validation_data=val_ds, epochs=tc.epochs, initial_epoch=start_epoch,
            # EpochSeeds first: each epoch's order and random streams are set before anything else runs
            callbacks=[batches.EpochSeeds(train_ds, tc.seed)] + ([plateau] if tc.lr_schedule == "plateau" else []) + [early, recorder],
            verbose=0,
        )
        checkpoints.save_checkpoint(r.run_dir / CHECKPOINTS, approximator, len(rows), rows, recorder.best,
                                    recorder.callback_states(), finished=True)
    r.timings["training_s"] = round(r.timings.get("training_s", 0.0) + time.perf_counter() - t0, 3)
    if not rows:
        raise ResumeError("training recorded no epoch")
    best_weights = checkpoints.weights_file(r.run_dir / CHECKPOINTS, "best")
    if best_weights is not None:
        checkpoints.load_weights(approximator, best_weights)
    atomic_save_keras(approximator, r.run_dir / "model.keras")
    atomic_write_json(r.run_dir / "timings.json", r.timings)
    return rows, recorder.best


def calibrate(r: Run, approximator, val: dict):
    """Fit the width factors on held-out validation traces (never the test traces) where the
    configuration asks for it; returns the factors in force (None: the flow as trained)."""
    if not r.config.training.calibrate_widths:
        return None
    _stage(r, CALIBRATE)
    cal_path = r.run_dir / calibration.FILENAME
    if not cal_path.exists():  # a resumed run keeps the factors it already fitted
        t0 = time.perf_counter()
        n_fit = min(CALIBRATION_TRACES, len(val["parameters"]))
        r.say(f"calibrating posterior widths on {n_fit} validation traces")
        raw = estimator.sample_posterior(approximator, val["observables"][:n_fit], CALIBRATION_DRAWS, current=val["current"][:n_fit],
                                         seed=r.config.training.seed, within_prior=False, dt_s=r.config.stimulus.dt_s)
        atomic_write_json(cal_path, calibration.fit(approximator.adapter, raw, val["parameters"][:n_fit]))
        r.timings["calibration_s"] = round(time.perf_counter() - t0, 3)
        atomic_write_json(r.run_dir / "timings.json", r.timings)
    return calibration.load_for(r.run_dir / "model.keras")


def fit_validity(r: Run, approximator, width_scale) -> validity.Check:
    """Fit the check `lif_sbi.infer` applies to every recording (validity.json), on held-out
    simulated traces of the run's set-up; a resumed run keeps the one it already fitted."""
    check = validity.Check.load(r.run_dir)
    if check is None:
        _stage(r, VALIDITY)
        t0 = time.perf_counter()
        r.say(f"validity check: fitting on {4 * r.config.diagnostics.validity_traces} held-out simulated traces")
        check = validity.fit(approximator, r.config, width_scale)
        check.save(r.run_dir)
        r.timings["validity_s"] = round(time.perf_counter() - t0, 3)
    r.say(f"validity check: {check.record['false_alarm_rate']:.1%} false alarms on {check.record['check_traces']} held-out traces")
    return check


def fresh_test_set(cfg) -> tuple[dict, np.ndarray]:
    """A configuration's fresh test set (diagnostics.n_test traces, its seed, stimulus and prior) and
    the traces as observed, with its recording noise: (dataset dict, (N, T, 1) V)."""
    diag = cfg.diagnostics
    test = dataset.simulate_dataset(diag.n_test, diag.seed, progress=False, stimulus_spec=cfg.stimulus, prior=cfg.prior.kind)
    return test, noise.add_noise(test["observables"], cfg.noise.sd_v, seed=diag.seed + NOISE_SEED_OFFSET)


def diagnose(r: Run, approximator, train: dict, rows: list[dict], width_scale):
    """Recovery, calibration and posterior-predictive checks on fresh test traces (with the
    configuration's stimulus, prior and recording noise); every figure written into plots/.
    Returns (metrics, plot paths, loss history)."""
    _stage(r, DIAGNOSE)
    t0 = time.perf_counter()
    diag, cfg = r.config.diagnostics, r.config
    r.say(f"diagnostics: {diag.n_test} fresh test traces x {diag.n_draws} posterior draws")
    test, observed = fresh_test_set(cfg)
    draws, acceptance = estimator.sample_posterior(
        approximator, observed, diag.n_draws, seed=diag.seed, return_acceptance=True, width_scale=width_scale,
        current=test["current"], prior=cfg.prior.kind, dt_s=cfg.stimulus.dt_s,
    )
    ppc_cases = [
        {"theta_draws": draws[i], "current": test["current"][i], "observed": observed[i, :, 0],
         "theta_true": test["parameters"][i], "label": f"test trace {i}"}
        for i in range(diag.n_ppc)
    ]
    history = {k: [row[k] for row in rows] for k in ("loss", "val_loss", "learning_rate")}
    n_prior = min(PRIOR_FIGURE_TRACES, len(train["parameters"]))
    grid = {"dt_s": cfg.stimulus.dt_s, "noise_sd_v": cfg.noise.sd_v}
    metrics, plots = diagnostics.run_all(
        r.run_dir / "plots", test["parameters"].astype(np.float64), draws, history=history,
        prior_theta=train["parameters"][:n_prior].astype(np.float64), prior_traces=train["observables"][:n_prior, :, 0],
        ppc_cases=ppc_cases, seed=diag.seed, metrics_file=None, **grid,
    )
    n_spike = min(SPIKE_CHECK_TRACES, diag.n_test)
    metrics["spike_times"] = diagnostics.spike_time_check(draws[:n_spike], test["current"][:n_spike], observed[:n_spike, :, 0],
                                                          seed=diag.seed, **grid)
    r.timings["diagnostics_s"] = round(time.perf_counter() - t0, 3)
    r.timings["total_s"] = round(r.timings.get("total_s", 0.0) + time.perf_counter() - r.started, 3)
    metrics["training"] = _training_summary(rows, r.config.training.epochs)
    metrics["sampling"] = {  # share of posterior draws inside the prior's support, per test trace
        "acceptance_mean": float(acceptance.mean()), "acceptance_min": float(acceptance.min()),
        "traces_without_any_draw_in_support": int((acceptance == 0).sum()),
    }
    if width_scale is not None:
        metrics["calibration"] = json.loads((r.run_dir / calibration.FILENAME).read_text())
    metrics["timings"] = r.timings
    metrics["jit_compile"] = bool(approximator.jit_compile)  # Keras' resolved choice ("auto": eager under torch)
    metrics["training_step"] = backends.training_step_kind(approximator)
    return metrics, plots, history


def write_records(r: Run, approximator, metrics: dict, plots, history: dict) -> None:
    """metrics.json, timings.json and report.md (the run is complete once report.md exists)."""
    atomic_write_json(r.run_dir / "metrics.json", metrics)
    atomic_write_json(r.run_dir / "timings.json", r.timings)
    env = json.loads((r.run_dir / "environment.json").read_text())
    report.write_report(
        r.run_dir, config_text=r.config.to_toml(), environment=env, metrics=metrics, plots=plots, history=history,
        extra=report.run_lines(r.run_dir.name, r.config, backends.name, env["device"], metrics,
                               simulator.device_label(r.config.data.device)),
    )


# ---------------------------------------------------------------------------------------------
# Parts of the stages


def _learning_rate(tc, steps_per_epoch: int):
    """Adam's learning rate: a number (the plateau schedule halves it from a callback) or Keras' cosine decay."""
    if tc.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            tc.learning_rate, decay_steps=tc.epochs * steps_per_epoch, alpha=tc.min_learning_rate / tc.learning_rate
        )
    return tc.learning_rate


def _start_weights(r: Run, approximator) -> None:
    """A new run: load `training.initial_weights` where given, and save the weights training starts from."""
    start_from = r.config.training.initial_weights
    if start_from:
        try:
            checkpoints.load_weights(approximator, Path(start_from))
        except Exception as exc:  # a user's file: whatever NumPy or the shape check says, it is bad input
            remove_tree(r.run_dir)  # nothing half-written: the run had not started
            raise ConfigError(f"training.initial_weights = {start_from!r}: not initial weights of this model configuration ({' '.join(str(exc).split())})") from None
    checkpoints.save_weights(approximator, r.run_dir / INITIAL_WEIGHTS)


def _restore_checkpoint(r: Run, approximator) -> None:
    """A resumed run: the checkpoint's weights and optimizer state; history.csv rewritten from it."""
    ckpt_path, state = r.checkpoint
    weights = checkpoints.weights_file(ckpt_path, "model")
    if weights is None:
        raise ResumeError(f"{ckpt_path} holds no model weights to resume from")
    checkpoints.load_weights(approximator, weights)
    checkpoints.restore_optimizer(approximator, ckpt_path / "optimizer.npz")
    checkpoints.write_history(r.run_dir, state["history"])  # the checkpoint is the truth; drop any row written after it


def _resume_point(r: Run):
    """(history rows, best validation loss, first epoch to run, training finished, callback counters)."""
    if r.checkpoint is None:
        return [], float("inf"), 0, False, {}
    state = r.checkpoint[1]
    best = float(checkpoints.unplain({"b": state["best_val_loss"]})["b"])
    cb_state = {k: checkpoints.unplain(v) for k, v in state["callbacks"].items()}
    return state["history"], best, state["epoch"], state.get("finished_training", False), cb_state


def _stage(r: Run, stage: int) -> None:
    """The global random streams set from (seed, stage) as a stage starts (`batches.reseed_stage`):
    a stage run again after a resume starts where it did in the uninterrupted run."""
    batches.reseed_stage(r.config.training.seed, stage)


def _training_summary(rows: list[dict], epochs: int) -> dict:
    best_row = min(rows, key=lambda row: row["val_loss"] if math.isfinite(row["val_loss"]) else float("inf"))
    return {
        "epochs_run": len(rows), "best_epoch": best_row["epoch"], "best_val_loss": best_row["val_loss"],
        "final_learning_rate": rows[-1]["learning_rate"], "stopped_early": len(rows) < epochs,
    }


# ---------------------------------------------------------------------------------------------
# The run folder


def validation_batch_size(n_val: int, batch_size: int) -> int:
    """The validation batch size: the largest one up to `batch_size` that splits the `n_val`
    validation traces into whole batches, if it is at least half of `batch_size`; else
    `batch_size`. A partial last batch is one more input shape, so one more compilation of the
    validation step wherever the step is compiled (JAX; TensorFlow's XLA; torch with
    jit_compile): 2,000 validation traces at batch 64 become 40 batches of 50."""
    if n_val <= batch_size:
        return max(1, n_val)
    size = next(d for d in range(batch_size, 0, -1) if n_val % d == 0)
    return size if 2 * size >= batch_size else batch_size


def new_run_dir(results_dir: Path, config: Config) -> Path:
    """results/<config>_<backend>_<UTC time>; never reuses an existing folder."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = f"{config.name}_{backends.name}_{stamp}"
    results_dir.mkdir(parents=True, exist_ok=True)
    for k in range(1, 1000):
        run_dir = results_dir / (base if k == 1 else f"{base}_{k}")
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a new run folder under {results_dir}")


def environment() -> dict:
    """Versions, backend and device, saved as the run's environment.json."""
    import bayesflow

    env = {
        "lif_sbi": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "keras_backend": backends.name,
        "backend_version": backends.module.version() if hasattr(backends.module, "version") else "",
        "device": backends.device_name(),
        "bayesflow": bayesflow.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "torch (simulator)": torch.__version__,
    }
    if not env["backend_version"]:
        env["backend_version"] = sys.modules[backends.name].__version__  # the framework's module is named as Keras' backend
    return env
