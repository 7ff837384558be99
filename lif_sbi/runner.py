"""One training run, end to end: data, fit with resumable checkpoints, diagnostics, report."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import platform
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch  # noqa: F401  (the simulator's; import torch before TensorFlow when both load)
import keras
import numpy as np

from . import __version__, backends, calibration, dataset, diagnostics, estimator, report
from .config import INITIAL_WEIGHTS, Config, ConfigError
from .diagnostics import atomic_write_text
from .priors import PARAMETERS

HISTORY_FIELDS = ("epoch", "loss", "val_loss", "learning_rate", "wall_s")
CHECKPOINTS = "checkpoints"
CALIBRATION_TRACES = 1000  # validation traces the width factors are fitted on (at most)
CALIBRATION_DRAWS = 500  # posterior draws per such trace


class ResumeError(Exception):
    """A run folder that cannot be continued: one line, exit code 2."""


# ---------------------------------------------------------------------------------------------
# Files


def _atomic_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def _atomic_keras_save(model, path: Path) -> None:
    """Keras needs the real suffix, so save to `<stem>.tmp.keras` and rename over `path`."""
    tmp = path.with_name(path.name[: -len(".keras")] + ".tmp.keras")
    model.save(str(tmp))
    os.replace(tmp, path)


# Checkpoint weights as one NumPy archive of `model.get_weights()`, written by hand: Keras'
# save_weights (HDF5, one dataset per variable) took 149 ms for the reference model against 8 ms
# for this on a 2-core CPU (bench/bench_training.py -k checkpoint_weights). In the reference run on
# an H100 its 100 checkpoints and 37 best-weights files took about 57 s, a quarter of the training
# time (bench/RESULTS.md, "GPU: NVIDIA H100 (2026-11-26, session 9)"). The final model.keras is
# still Keras' own format.
def _save_weights_npz(model, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, *model.get_weights())
    os.replace(tmp, path)


def _load_weights(model, path: Path) -> None:
    """Weights saved by `_save_weights_npz` or, from checkpoints of earlier versions, Keras' HDF5."""
    if path.suffix == ".h5":
        with warnings.catch_warnings():
            # an HDF5 weights file also holds the optimizer's, which is not built yet here; its
            # state is restored from optimizer.npz, so Keras' "Skipping variable loading" note is moot
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model.load_weights(str(path))
        return
    with np.load(path) as f:
        values = [f[f"arr_{i}"] for i in range(len(f.files))]
    shapes = [tuple(w.shape) for w in model.weights]
    if [v.shape for v in values] != shapes:
        raise ResumeError(f"{path}: its {len(values)} arrays do not match this model's {len(shapes)} weights")
    model.set_weights(values)


def _weights_file(folder: Path, stem: str) -> Path | None:
    """`<stem>.weights.npz`, else `<stem>.weights.h5` (earlier versions), else None."""
    for suffix in (".weights.npz", ".weights.h5"):
        if (folder / (stem + suffix)).exists():
            return folder / (stem + suffix)
    return None


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


def _write_history(run_dir: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(run_dir / "history.csv", buf.getvalue())


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
    import bayesflow
    import torch

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
        env["backend_version"] = sys.modules[{"torch": "torch", "tensorflow": "tensorflow", "jax": "jax"}[backends.name]].__version__
    return env


# ---------------------------------------------------------------------------------------------
# Resumable callbacks. Keras' EarlyStopping and ReduceLROnPlateau reset their counters in
# on_train_begin; these subclasses put back the counters saved with the last checkpoint.


class _Resumable:
    """Mixin: put back the counters named in STATE after the callback's own on_train_begin."""

    STATE: tuple[str, ...] = ()

    def __init__(self, *args, resume_state: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.resume_state = resume_state or {}

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        for k, v in self.resume_state.items():
            setattr(self, k, v)

    def state(self) -> dict:
        return {k: _plain(getattr(self, k)) for k in self.STATE}


class ResumableEarlyStopping(_Resumable, keras.callbacks.EarlyStopping):
    STATE = ("wait", "best", "best_epoch", "stopped_epoch")


class ResumableReduceLROnPlateau(_Resumable, keras.callbacks.ReduceLROnPlateau):
    STATE = ("wait", "best", "cooldown_counter")


def _plain(x):
    x = float(x) if isinstance(x, (np.floating, float)) else int(x) if isinstance(x, (np.integer, int)) else x
    if isinstance(x, float) and not math.isfinite(x):
        return "inf" if x > 0 else "-inf"
    return x


def _unplain(state: dict) -> dict:
    return {k: float(v) if v in ("inf", "-inf") else v for k, v in state.items()}


class EpochRecorder(keras.callbacks.Callback):
    """After every epoch: history row, resumable checkpoint, best weights, one progress line.

    Written by hand: Keras' ModelCheckpoint does not save the optimizer state with the weights
    in a resumable form, nor callback counters, and its progress bar shows neither the learning
    rate nor the time left.
    """

    def __init__(self, run_dir: Path, epochs: int, rows: list[dict], best: float, others, quiet: bool):
        super().__init__()
        self.run_dir, self.epochs, self.rows, self.best, self.others, self.quiet = run_dir, epochs, rows, best, others, quiet
        self.ckpt_dir = run_dir / CHECKPOINTS
        self.ckpt_dir.mkdir(exist_ok=True)

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.perf_counter()
        self.lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        wall = time.perf_counter() - self.t0
        row = {
            "epoch": epoch + 1,
            "loss": float(logs.get("loss", float("nan"))),
            "val_loss": float(logs.get("val_loss", float("nan"))),
            "learning_rate": self.lr,
            "wall_s": round(wall, 3),
        }
        self.rows.append(row)
        if math.isfinite(row["val_loss"]) and row["val_loss"] < self.best:
            self.best = row["val_loss"]
            _save_weights_npz(self.model, self.ckpt_dir / "best.weights.npz")
        # history.csv first, then the checkpoint: a run killed in between resumes from the previous
        # checkpoint and rewrites history.csv from it, so the file is never behind `latest`.
        _write_history(self.run_dir, self.rows)
        save_checkpoint(self.ckpt_dir, self.model, epoch + 1, self.rows, self.best, {type(c).__name__: c.state() for c in self.others})
        if not self.quiet:
            mean = sum(r["wall_s"] for r in self.rows[-5:]) / len(self.rows[-5:])
            left = mean * (self.epochs - epoch - 1)
            print(
                f"epoch {epoch + 1:>3}/{self.epochs}  loss {row['loss']:8.4f}  val_loss {row['val_loss']:8.4f}  "
                f"lr {self.lr:.1e}  {wall:5.1f} s  ~{_duration(left)} left at most",
                flush=True,
            )


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def save_checkpoint(ckpt_dir: Path, model, epoch: int, rows, best: float, callbacks: dict, finished: bool = False) -> None:
    """checkpoints/epoch_NNNN/ (weights, optimizer variables, state), then the `latest` pointer.

    Each step is a rename, so a killed process leaves the previous checkpoint intact.
    """
    target = ckpt_dir / f"epoch_{epoch:04d}"
    tmp = ckpt_dir / f"epoch_{epoch:04d}.tmp"
    if tmp.exists():
        _rmtree(tmp)
    tmp.mkdir(parents=True)
    _save_weights_npz(model, tmp / "model.weights.npz")
    np.savez(tmp / "optimizer.npz", *[keras.ops.convert_to_numpy(v) for v in model.optimizer.variables])
    state = {"epoch": epoch, "history": rows, "best_val_loss": _plain(best), "callbacks": callbacks, "finished_training": finished}
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    if target.exists():
        _rmtree(target)
    os.replace(tmp, target)
    atomic_write_text(ckpt_dir / "latest", target.name + "\n")
    for old in ckpt_dir.glob("epoch_*"):
        if old.name != target.name and not old.name.endswith(".tmp"):
            _rmtree(old)


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(ckpt_dir: Path) -> tuple[Path, dict]:
    try:
        name = (ckpt_dir / "latest").read_text().strip()
        state = json.loads((ckpt_dir / name / "state.json").read_text())
    except (OSError, ValueError) as exc:
        raise ResumeError(f"{ckpt_dir} holds no complete checkpoint to resume from ({exc.__class__.__name__})") from None
    return ckpt_dir / name, state


# ---------------------------------------------------------------------------------------------
# The run


def run(config: Config, *, run_dir: Path | None, results_dir: Path, quiet: bool = False) -> int:
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    t_start = time.perf_counter()
    resuming = run_dir is not None
    # before anything is written: "auto" becomes the device used, saved as such in config.toml
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, device=dataset.resolve_device(config.data.device)))
    backends.set_seed(config.training.seed)
    start_from = Path(config.training.initial_weights) if config.training.initial_weights and not resuming else None
    if start_from is not None and not start_from.is_file():
        raise ConfigError(f"training.initial_weights = {str(start_from)!r}: no such file")
    if resuming:
        ckpt_path, state = load_checkpoint(run_dir / CHECKPOINTS)
        say(f"resuming {run_dir} after epoch {state['epoch']}")
    else:
        run_dir = new_run_dir(results_dir, config)
        state = None
        atomic_write_text(run_dir / "config.toml", config.to_toml())
        _atomic_json(run_dir / "environment.json", environment())
        say(f"run folder: {run_dir}")
    timings = json.loads((run_dir / "timings.json").read_text()) if (run_dir / "timings.json").exists() else {}

    # Data
    t0 = time.perf_counter()
    dc = config.data
    cache_dir = dataset.DEFAULT_CACHE_DIR if dc.cache else None
    data, cache_path, from_cache = dataset.load_or_simulate(dc.n_traces, dc.seed, device=dc.device, cache_dir=cache_dir, progress=not quiet)
    train, val = dataset.split(data, dc.validation_fraction, dc.seed)
    timings.setdefault("simulation_s", round(time.perf_counter() - t0, 3))
    timings.setdefault("data_from_cache", from_cache)
    origin = (f"loaded from {cache_path}" if from_cache
              else f"simulated on {dataset.device_label(dc.device)} in {time.perf_counter() - t0:.1f} s"
              + (f", saved to {cache_path}" if cache_path else ", not cached (data.cache = false)"))
    say(f"data: {len(train['parameters'])} training / {len(val['parameters'])} validation traces ({origin})")

    # Model
    import bayesflow as bf

    approximator = estimator.build_approximator(config.model)
    estimator.quiet_file_probe()  # before the first checkpoint save
    keys = ("parameters", "observables")
    train_ds = bf.datasets.OfflineDataset({k: train[k] for k in keys}, batch_size=config.training.batch_size, adapter=approximator.adapter)
    val_ds = bf.datasets.OfflineDataset({k: val[k] for k in keys}, batch_size=validation_batch_size(len(val["parameters"]), config.training.batch_size),
                                        adapter=approximator.adapter, shuffle=False)
    tc = config.training
    if tc.lr_schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            tc.learning_rate, decay_steps=tc.epochs * len(train_ds), alpha=tc.min_learning_rate / tc.learning_rate
        )
    else:
        learning_rate = tc.learning_rate
    approximator.compile(optimizer=keras.optimizers.Adam(learning_rate), jit_compile=tc.jit_compile)
    approximator.build_from_data(train_ds[0])
    if state is None:
        if start_from is not None:
            try:
                _load_weights(approximator, start_from)
            except Exception as exc:  # a user's file: whatever NumPy or the shape check says, it is bad input
                _rmtree(run_dir)  # nothing half-written: the run had not started
                raise ConfigError(f"training.initial_weights = {str(start_from)!r}: not initial weights of this model configuration ({' '.join(str(exc).split())})") from None
        _save_weights_npz(approximator, run_dir / INITIAL_WEIGHTS)

    rows: list[dict] = []
    best = float("inf")
    start_epoch = 0
    cb_state: dict = {}
    finished = False
    if state is not None:
        weights = _weights_file(ckpt_path, "model")
        if weights is None:
            raise ResumeError(f"{ckpt_path} holds no model weights to resume from")
        _load_weights(approximator, weights)
        opt = approximator.optimizer
        opt.build(approximator.trainable_variables)
        with np.load(ckpt_path / "optimizer.npz") as f:
            values = [f[f"arr_{i}"] for i in range(len(f.files))]
        if len(values) != len(opt.variables):
            raise ResumeError(f"{ckpt_path}: optimizer state does not match this model ({len(values)} vs {len(opt.variables)} variables)")
        for var, value in zip(opt.variables, values):
            var.assign(value)
        rows, start_epoch, finished = state["history"], state["epoch"], state.get("finished_training", False)
        best = float(_unplain({"b": state["best_val_loss"]})["b"])
        cb_state = {k: _unplain(v) for k, v in state["callbacks"].items()}
        _write_history(run_dir, rows)  # the checkpoint is the truth; drop any row written after it

    early = ResumableEarlyStopping(
        monitor="val_loss", patience=config.training.early_stopping_patience, mode="min",
        restore_best_weights=False,  # the best epoch's weights are loaded from best.weights.npz after fit
        resume_state=cb_state.get("ResumableEarlyStopping"),
    )
    plateau = ResumableReduceLROnPlateau(
        monitor="val_loss", factor=config.training.lr_plateau_factor, patience=config.training.lr_plateau_patience,
        min_lr=config.training.min_learning_rate, mode="min", resume_state=cb_state.get("ResumableReduceLROnPlateau"),
    )
    recorder = EpochRecorder(run_dir, config.training.epochs, rows, best, [early, plateau], quiet)

    if "training_s" not in timings and rows:
        # resuming a run killed during training: timings.json is written after training, so the
        # earlier sessions' training time is the sum of their epochs' wall seconds in the history
        timings["training_s"] = round(sum(r["wall_s"] for r in rows), 3)
        timings["total_s"] = timings["training_s"]
    if resuming:
        timings["sessions"] = timings.get("sessions", 1) + 1
    t0 = time.perf_counter()
    if not finished and start_epoch < config.training.epochs:
        backends.prepare_training(approximator, record_steps=tc.record_steps, compile_steps=tc.compile_steps)
        say(f"training under Keras backend '{backends.name}' on {backends.device_name()} "
            f"(training step: {backends.training_step_kind(approximator)}): up to {config.training.epochs} epochs")
        approximator.fit(
            dataset=train_ds, validation_data=val_ds, epochs=config.training.epochs, initial_epoch=start_epoch,
            callbacks=([plateau] if tc.lr_schedule == "plateau" else []) + [early, recorder], verbose=0,
        )
        save_checkpoint(run_dir / CHECKPOINTS, approximator, len(rows), rows, recorder.best,
                        {type(c).__name__: c.state() for c in (early, plateau)}, finished=True)
    timings["training_s"] = round(timings.get("training_s", 0.0) + time.perf_counter() - t0, 3)
    if not rows:
        raise ResumeError("training recorded no epoch")
    best_weights = _weights_file(run_dir / CHECKPOINTS, "best")
    if best_weights is not None:
        _load_weights(approximator, best_weights)
    _atomic_keras_save(approximator, run_dir / "model.keras")
    _atomic_json(run_dir / "timings.json", timings)

    # Width recalibration on held-out validation traces (never the test traces below)
    width_scale = None
    if tc.calibrate_widths:
        cal_path = run_dir / calibration.FILENAME
        if not cal_path.exists():  # a resumed run keeps the factors it already fitted
            t0 = time.perf_counter()
            n_fit = min(CALIBRATION_TRACES, len(val["parameters"]))
            say(f"calibrating posterior widths on {n_fit} validation traces")
            raw = estimator.sample_posterior(approximator, val["observables"][:n_fit], CALIBRATION_DRAWS,
                                             seed=config.training.seed, within_prior=False)
            record = calibration.fit(approximator.adapter, raw, val["parameters"][:n_fit])
            _atomic_json(cal_path, record)
            timings["calibration_s"] = round(time.perf_counter() - t0, 3)
            _atomic_json(run_dir / "timings.json", timings)
        width_scale = calibration.load_for(run_dir / "model.keras")

    # Diagnostics on fresh test traces
    t0 = time.perf_counter()
    diag = config.diagnostics
    say(f"diagnostics: {diag.n_test} fresh test traces x {diag.n_draws} posterior draws")
    test = dataset.simulate_dataset(diag.n_test, diag.seed, progress=False)
    draws, acceptance = estimator.sample_posterior(
        approximator, test["observables"], diag.n_draws, seed=diag.seed, return_acceptance=True, width_scale=width_scale
    )
    ppc_cases = [
        {"theta_draws": draws[i], "current": test["current"][i], "observed": test["observables"][i, :, 0],
         "theta_true": test["parameters"][i], "label": f"test trace {i}"}
        for i in range(diag.n_ppc)
    ]
    history = {k: [r[k] for r in rows] for k in ("loss", "val_loss", "learning_rate")}
    n_prior = min(2000, len(train["parameters"]))
    metrics, plots = diagnostics.run_all(
        run_dir / "plots", test["parameters"].astype(np.float64), draws, history=history,
        prior_theta=train["parameters"][:n_prior].astype(np.float64), prior_traces=train["observables"][:n_prior, :, 0],
        ppc_cases=ppc_cases, seed=diag.seed, metrics_file=None,
    )
    timings["diagnostics_s"] = round(time.perf_counter() - t0, 3)
    timings["total_s"] = round(timings.get("total_s", 0.0) + time.perf_counter() - t_start, 3)
    best_row = min(rows, key=lambda r: r["val_loss"] if math.isfinite(r["val_loss"]) else float("inf"))
    metrics["training"] = {
        "epochs_run": len(rows), "best_epoch": best_row["epoch"], "best_val_loss": best_row["val_loss"],
        "final_learning_rate": rows[-1]["learning_rate"], "stopped_early": len(rows) < config.training.epochs,
    }
    metrics["sampling"] = {  # share of posterior draws inside the prior's support, per test trace
        "acceptance_mean": float(acceptance.mean()), "acceptance_min": float(acceptance.min()),
        "traces_without_any_draw_in_support": int((acceptance == 0).sum()),
    }
    if width_scale is not None:
        metrics["calibration"] = json.loads((run_dir / calibration.FILENAME).read_text())
    metrics["timings"] = timings
    metrics["jit_compile"] = bool(approximator.jit_compile)  # Keras' resolved choice ("auto": eager under torch)
    metrics["training_step"] = backends.training_step_kind(approximator)
    _atomic_json(run_dir / "metrics.json", metrics)
    _atomic_json(run_dir / "timings.json", timings)
    env = json.loads((run_dir / "environment.json").read_text())
    report.write_report(
        run_dir, config_text=config.to_toml(), environment=env, metrics=metrics, plots=plots, history=history,
        extra={"run id": run_dir.name, "configuration": config.name, "backend": backends.name, "device": env["device"],
               "training step": metrics["training_step"],
               "simulation": (f"loaded from the cache in {timings['simulation_s']:.1f} s" if timings.get("data_from_cache")
                              else f"{timings['simulation_s']:.1f} s on {dataset.device_label(config.data.device)}"), "training": f"{timings['training_s']:.1f} s" + (f" over {timings['sessions']} sessions (--resume)" if "sessions" in timings else ""),
               **({"width calibration": f"{timings['calibration_s']:.1f} s"} if "calibration_s" in timings else {}),
               "diagnostics": f"{timings['diagnostics_s']:.1f} s", "total": f"{timings['total_s']:.1f} s",
               "posterior widths": _widths_line(metrics.get("calibration"))},
    )
    print(summary(run_dir, metrics), flush=True)
    return 0


def _widths_line(record: dict | None) -> str:
    if record is None:
        return "as trained (training.calibrate_widths = false)"
    factors = ", ".join(f"{k} {calibration.describe(v)}" for k, v in record["width_scale"].items())
    return (f"rescaled per parameter, fitted on {record['fitted_on']['validation_traces']} validation traces "
            f"(calibration.json; the figures below are after it): {factors}")


def summary(run_dir: Path, metrics: dict) -> str:
    cal = metrics.get("calibration")
    lines = [f"\n{'parameter':<10}{'r':>8}{'cov50':>8}{'cov90':>8}  SBC" + ("   width factor" if cal else "")]
    for p in PARAMETERS:
        m = metrics["parameters"][p.name]
        r = "n/a" if m["r"] is None else f"{m['r']:.3f}"
        factor = f"   {calibration.describe(cal['width_scale'][p.name])}" if cal else ""
        lines.append(f"{p.name:<10}{r:>8}{m['coverage_50']:>8.2f}{m['coverage_90']:>8.2f}  {'pass' if m['sbc_pass'] else 'FAIL'}{factor}")
    t = metrics["timings"]
    lines.append(f"total {t['total_s']:.0f} s (training {t['training_s']:.0f} s); report: {run_dir / 'report.md'}")
    return "\n".join(lines)
