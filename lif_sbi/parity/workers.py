"""Worker subprocesses: every Keras computation runs in a fresh process under one backend, which prints one JSON line last."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ..errors import EXIT_ENVIRONMENT, KERAS_BACKENDS as KNOWN_BACKENDS, EnvironmentFault, installed_backends  # noqa: F401  (re-exported)


class ParityError(Exception):
    """A step of the parity run that could not be carried out (not a parity failure)."""


def _failed(what: str, backend: str, proc: subprocess.CompletedProcess) -> Exception:
    """A worker's failure: its own one line where it stopped for the environment (exit 4: a file
    that cannot be written, no space), else ParityError with the end of its stderr."""
    lines = proc.stderr.strip().splitlines()
    if proc.returncode == EXIT_ENVIRONMENT and lines and lines[-1].startswith("error: "):
        return EnvironmentFault(f"{what} under {backend}: {lines[-1][len('error: '):]}")
    return ParityError(f"{what} under {backend} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")


# ---------------------------------------------------------------------------------------------
# Parent side (no Keras)


def worker_env(backend: str, extra: dict | None = None) -> dict:
    env = os.environ | {"KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONHASHSEED": "0"}
    return env | (extra or {})


def run_worker(backend: str, task: str, args: dict, *, timeout: float = 1800) -> dict:
    """Run `task` under `backend` in a fresh process; returns its JSON answer."""
    cmd = [sys.executable, "-m", "lif_sbi.parity", "_worker", task, json.dumps(args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=worker_env(backend), timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise _failed(task, backend, proc)
    return json.loads(lines[-1])


def train(backend: str, config_name: str, overrides: list[str], out_dir: Path, *, timeout: float = 4 * 3600) -> Path:
    """Train `config_name` under `backend` with the train CLI; returns the run folder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "lif_sbi.train", "--config", config_name, "--results-dir", str(out_dir), "--quiet"]
    for o in overrides:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=worker_env(backend), timeout=timeout)
    runs = sorted(p for p in out_dir.iterdir() if p.is_dir() and (p / "model.keras").exists())
    if proc.returncode != 0 or not runs:
        raise _failed("training", backend, proc)
    return runs[-1]


# ---------------------------------------------------------------------------------------------
# Worker side (runs under one backend; imports Keras)


def worker_main(task: str, args: dict) -> dict:
    """Carry out one worker task (`python -m lif_sbi.parity _worker TASK JSON`); returns its JSON answer."""
    from .. import quiet

    quiet.libraries()
    with quiet.startup_lines():
        import torch  # noqa: F401  (import torch before TensorFlow when both load)
        import keras  # noqa: F401

    from .. import backends
    from . import retraining, same_weights

    backends.set_seed(args.get("seed", 0))
    if task == "evaluate":
        return same_weights.task_evaluate(args)
    if task == "perturb":
        return same_weights.task_perturb(args)
    if task == "draws":
        return retraining.task_draws(args)
    if task == "backend":
        return {"backend": backends.name, "device": backends.device_name()}
    raise ValueError(f"unknown worker task {task!r}")
