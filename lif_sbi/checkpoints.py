"""A run's per-epoch record and checkpoints: history.csv, weights, optimizer state and the Keras callbacks' counters, resumable."""

from __future__ import annotations

import csv
import io
import json
import math
import time
import warnings
from pathlib import Path

import keras
import numpy as np

from . import backends
from .files import atomic_save_npz, atomic_write_text, remove_tree

HISTORY_FIELDS = ("epoch", "loss", "val_loss", "learning_rate", "wall_s")
CHECKPOINTS = "checkpoints"  # the run folder's subfolder holding them


class ResumeError(Exception):
    """A run folder that cannot be continued: one line, exit code 2."""


# ---------------------------------------------------------------------------------------------
# Weights. Written by hand as one NumPy archive of `model.get_weights()`: Keras' save_weights
# (HDF5, one dataset per variable) took 149 ms for the reference model against 8 ms for this on a
# 2-core CPU (bench/bench_training.py -k checkpoint_weights), and the reference run's 137
# checkpoint and best-weights files on an H100 took about 57 s that way, a quarter of its training
# time (bench/RESULTS.md). The final model.keras is Keras' own format.


def save_weights(model, path: Path) -> None:
    """The model's weights as one .npz archive (`arr_0`, `arr_1`, ... in `model.weights` order), atomically."""
    atomic_save_npz(path, *model.get_weights())


def load_weights(model, path: Path) -> None:
    """Weights saved by `save_weights`, or by Keras' own `save_weights` (an HDF5 `.weights.h5` file)."""
    if path.suffix == ".h5":
        with warnings.catch_warnings():
            # an HDF5 weights file also holds the optimizer's, which is not built yet here; its
            # state is restored from optimizer.npz, so Keras' "Skipping variable loading" note is moot
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model.load_weights(str(path))
        return
    values = _read_arrays(path)
    shapes = [tuple(w.shape) for w in model.weights]
    if [v.shape for v in values] != shapes:
        raise ResumeError(f"{path}: its {len(values)} arrays do not match this model's {len(shapes)} weights")
    model.set_weights(values)


def weights_file(folder: Path, stem: str) -> Path | None:
    """`<stem>.weights.npz`, else Keras' `<stem>.weights.h5`, else None."""
    for suffix in (".weights.npz", ".weights.h5"):
        if (folder / (stem + suffix)).exists():
            return folder / (stem + suffix)
    return None


def restore_optimizer(model, path: Path) -> None:
    """Put back the optimizer variables a checkpoint's `optimizer.npz` holds (building the optimizer first)."""
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    values = _read_arrays(path)
    if len(values) != len(optimizer.variables):
        raise ResumeError(f"{path.parent}: optimizer state does not match this model ({len(values)} vs {len(optimizer.variables)} variables)")
    for variable, value in zip(optimizer.variables, values):
        variable.assign(value)


# ---------------------------------------------------------------------------------------------
# history.csv


def write_history(run_dir: Path, rows: list[dict]) -> None:
    """history.csv: one row per finished epoch (HISTORY_FIELDS), written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(run_dir / "history.csv", buf.getvalue())


# ---------------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(ckpt_dir: Path, model, epoch: int, rows, best: float, callbacks: dict, finished: bool = False) -> None:
    """checkpoints/epoch_NNNN/ (weights, optimizer variables, state), then the `latest` pointer.

    Each step is a rename, so a killed process leaves the previous checkpoint intact; a write
    that fails removes the half-made folder. The state holds what decides the rest of the run
    besides the weights: the history, the callbacks' counters and the step recorders' counters
    (`backends.training_state`); every random stream is set from (seed, epoch) (`batches`).
    """
    target = ckpt_dir / f"epoch_{epoch:04d}"
    tmp = ckpt_dir / f"epoch_{epoch:04d}.tmp"
    if tmp.exists():
        remove_tree(tmp)
    tmp.mkdir(parents=True)
    try:
        save_weights(model, tmp / "model.weights.npz")
        atomic_save_npz(tmp / "optimizer.npz", *[keras.ops.convert_to_numpy(v) for v in model.optimizer.variables])
        state = {"epoch": epoch, "history": rows, "best_val_loss": plain(best), "callbacks": callbacks,
                 "steps": backends.training_state(model), "finished_training": finished}
        atomic_write_text(tmp / "state.json", json.dumps(state, indent=2))
    except BaseException:
        remove_tree(tmp)
        raise
    if target.exists():
        remove_tree(target)
    tmp.rename(target)
    atomic_write_text(ckpt_dir / "latest", target.name + "\n")
    for old in ckpt_dir.glob("epoch_*"):
        if old.name != target.name and not old.name.endswith(".tmp"):
            remove_tree(old)


def load_checkpoint(ckpt_dir: Path) -> tuple[Path, dict] | None:
    """The latest complete checkpoint's folder and its state.json; None where the run has none
    yet (killed before its first epoch ended: it starts again from its first epoch, which gives
    the same run); ResumeError where `latest` names one that cannot be read."""
    if not (ckpt_dir / "latest").exists():
        return None
    try:
        name = (ckpt_dir / "latest").read_text().strip()
        state = json.loads((ckpt_dir / name / "state.json").read_text())
    except (OSError, ValueError) as exc:
        raise ResumeError(f"{ckpt_dir}: its latest checkpoint cannot be read ({_cause(exc)}); the run cannot be resumed, start a new one") from None
    return ckpt_dir / name, state


def _cause(exc: BaseException) -> str:
    """An exception as a short phrase: its message, or its type's name where it has none."""
    text = " ".join(str(exc).split())
    return text[:200] if text else type(exc).__name__


def _read_arrays(path: Path) -> list[np.ndarray]:
    """The arrays `arr_0`, `arr_1`, ... of an .npz file; ResumeError (one line) where it is
    missing, truncated or not an archive."""
    try:
        with np.load(path) as f:
            return [f[f"arr_{i}"] for i in range(len(f.files))]
    except Exception as exc:  # noqa: BLE001 - zipfile, NumPy and OS errors alike mean a damaged file
        raise ResumeError(f"{path} cannot be read ({_cause(exc)}): a damaged or foreign file") from None


def plain(x):
    """A NumPy or Python number as a JSON value: int, float, or "inf"/"-inf"."""
    x = float(x) if isinstance(x, (np.floating, float)) else int(x) if isinstance(x, (np.integer, int)) else x
    if isinstance(x, float) and not math.isfinite(x):
        return "inf" if x > 0 else "-inf"
    return x


def unplain(state: dict) -> dict:
    """`plain`'s inverse for the values of a dict."""
    return {k: float(v) if v in ("inf", "-inf") else v for k, v in state.items()}


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
        return {k: plain(getattr(self, k)) for k in self.STATE}


class ResumableEarlyStopping(_Resumable, keras.callbacks.EarlyStopping):
    STATE = ("wait", "best", "best_epoch", "stopped_epoch")


class ResumableReduceLROnPlateau(_Resumable, keras.callbacks.ReduceLROnPlateau):
    STATE = ("wait", "best", "cooldown_counter")


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
            save_weights(self.model, self.ckpt_dir / "best.weights.npz")
        # history.csv first, then the checkpoint: a run killed in between resumes from the previous
        # checkpoint and rewrites history.csv from it, so the file is never behind `latest`.
        write_history(self.run_dir, self.rows)
        save_checkpoint(self.ckpt_dir, self.model, epoch + 1, self.rows, self.best, self.callback_states())
        if not self.quiet:
            mean = sum(r["wall_s"] for r in self.rows[-5:]) / len(self.rows[-5:])
            left = mean * (self.epochs - epoch - 1)
            print(
                f"epoch {epoch + 1:>3}/{self.epochs}  loss {row['loss']:8.4f}  val_loss {row['val_loss']:8.4f}  "
                f"lr {self.lr:.1e}  {wall:5.1f} s  ~{duration(left)} left at most",
                flush=True,
            )

    def callback_states(self) -> dict:
        """The resumable callbacks' counters, by class name, as a checkpoint keeps them."""
        return {type(c).__name__: c.state() for c in self.others}


def duration(seconds: float) -> str:
    """'42 s' or '3.5 min'."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
