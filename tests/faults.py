"""Fault injection for training runs: `python tests/faults.py FAULT -- TRAIN_ARGS...` runs
`python -m lif_sbi.train TRAIN_ARGS` with one fault injected at a named point, by patching the
project's own functions in this process (nothing in the package knows about it):

- ``kill:simulation``, ``kill:epoch=E,batch=B``, ``kill:checkpoint=E``, ``kill:calibration``,
  ``kill:validity``, ``kill:diagnostics``, ``kill:report``: SIGKILL of this process, by its own
  pid, after the first simulated chunk; as batch B of epoch E (from 0) is fetched; inside epoch
  E's checkpoint write (its weights written, its optimizer state not); as the width fit, the
  validity fit, the spike-time check (the diagnostics' figures written) or the report starts.
  ``int:POINT``: the same points, SIGINT (Ctrl-C) instead.
- ``uninstalled:NAME``: as if the framework of Keras backend NAME were not installed.
- ``fail:NAME:ERRNO``: every atomic write (`lif_sbi.files.atomic_write`, which every file of a
  run goes through) of a file named NAME, or in a folder named NAME (a glob, e.g. ``epoch_*`` or
  ``*.png``), fails with that OSError (ENOSPC, EROFS, EACCES, EPERM, EDQUOT) as its bytes are
  written, through the helper's own clean-up.
- ``none``: no fault.

The tests (`tests/test_faults.py`) and `bench/fault_table.py` use `FAULTS` and `train` below.
"""

from __future__ import annotations

import csv
import errno
import fnmatch
import io
import json
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parent.parent

# Kill points and write faults the tests and the table exercise, in a run's order.
KILL_POINTS = ("simulation", "epoch=1,batch=1", "checkpoint=2", "calibration", "validity", "diagnostics", "report")


SIGNAL = {"kill": signal.SIGKILL, "int": signal.SIGINT}
_signal = [signal.SIGKILL]  # the signal `_kill` sends (install_kill sets it)


def _kill() -> None:
    os.kill(os.getpid(), _signal[0])


def _after(module, name: str, when=lambda *a, **k: True):
    """Patch module.name to run, then kill this process where `when(*args)` holds."""
    original = getattr(module, name)

    def patched(*args, **kwargs):
        out = original(*args, **kwargs)
        if when(*args, **kwargs):
            _kill()
        return out

    setattr(module, name, patched)


def _before(module, name: str):
    def patched(*args, **kwargs):
        _kill()

    setattr(module, name, patched)


def _killing_getitem(original, epoch: int, batch: int):
    def getitem(self, item):
        if self.epoch == epoch and item == batch:
            _kill()
        return original(self, item)

    return getitem


def install_kill(point: str, sig: int = signal.SIGKILL) -> None:
    _signal[0] = sig
    from lif_sbi import batches, calibration, checkpoints, diagnostics, report, simulator, validity

    if point == "simulation":
        _after(simulator, "simulate_batch")
    elif point.startswith("epoch="):
        epoch, batch = (int(part.split("=")[1]) for part in point.split(","))
        from lif_sbi import online

        for cls in (batches.Batches, online.OnlineBatches):  # offline and online training data
            cls.__getitem__ = _killing_getitem(cls.__getitem__, epoch, batch)
    elif point.startswith("checkpoint="):
        folder = f"epoch_{int(point.split('=')[1]):04d}.tmp"
        _after(checkpoints, "save_weights", when=lambda model, path: Path(path).parent.name == folder)
    elif point in ("calibration", "validity"):
        _before(calibration if point == "calibration" else validity, "fit")
    elif point == "diagnostics":
        _before(diagnostics, "spike_time_check")
    elif point == "report":
        _before(report, "write_report")
    else:
        raise SystemExit(f"unknown kill point {point!r}")


def install_failure(name: str, code: str) -> None:
    from lif_sbi import files

    number = getattr(errno, code)
    original = files.atomic_write

    def fails(tmp):  # as the OS reports it to write(): an errno and its message, no file named
        raise OSError(number, os.strerror(number))

    def atomic_write(path, write, suffix=".tmp"):
        if fnmatch.fnmatch(Path(path).name, name) or fnmatch.fnmatch(Path(path).parent.name, name):
            write = fails
        return original(path, write, suffix)

    files.atomic_write = atomic_write


def main(argv: list[str]) -> int:
    fault, rest = argv[0], argv[argv.index("--") + 1:]
    from lif_sbi import quiet

    quiet.libraries()  # as train.main does first: the patches below import BayesFlow
    if fault.startswith("int:"):  # a shell's background job inherits SIGINT ignored: Python's own handler back
        signal.signal(signal.SIGINT, signal.default_int_handler)
    from lif_sbi import train

    kind, _, what = fault.partition(":")
    if kind in SIGNAL:
        install_kill(what, SIGNAL[kind])
    elif kind == "uninstalled":  # as if that Keras backend's framework were not installed
        from lif_sbi import errors

        installed = errors.installed_backends()
        errors.installed_backends = lambda: [b for b in installed if b != what]
    elif fault.startswith("fail:"):
        name, code = fault[5:].rsplit(":", 1)
        install_failure(name, code)
    elif fault != "none":
        raise SystemExit(f"unknown fault {fault!r}")
    return train.main(rest)


def _arrays(path: Path) -> list[np.ndarray]:
    with np.load(path) as f:
        return [f[k] for k in sorted(f.files)]


def _keras_weights(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of model.keras's weights file, by its HDF5 path."""
    with zipfile.ZipFile(path) as z, h5py.File(io.BytesIO(z.read("model.weights.h5")), "r") as f:
        out = {}
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        return out


def finished_record(run_dir: Path) -> dict:
    """What a finished run decided, without its wall times: losses and learning rates per epoch,
    the final and best weights, the optimizer state, the callbacks' counters, the width factors,
    the validity check and every metric. (metrics.json's "training_step" describes how the last
    start ran its steps, not what they computed.)"""
    with open(run_dir / "history.csv") as f:
        history = [{k: v for k, v in row.items() if k != "wall_s"} for row in csv.DictReader(f)]
    ckpt = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    state = json.loads((ckpt / "state.json").read_text())
    state["history"] = [{k: v for k, v in row.items() if k != "wall_s"} for row in state["history"]]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("timings", "training_step"):
        metrics.pop(key)
    return {
        "history": history, "state": {k: v for k, v in state.items() if k != "steps"},
        "weights": _arrays(ckpt / "model.weights.npz"), "optimizer": _arrays(ckpt / "optimizer.npz"),
        "best": _arrays(run_dir / "checkpoints" / "best.weights.npz"), "model.keras": _keras_weights(run_dir / "model.keras"),
        "calibration": json.loads((run_dir / "calibration.json").read_text()),
        "validity": json.loads((run_dir / "validity.json").read_text()), "metrics": metrics,
    }


def assert_identical(a, b, where="record"):
    """`a` and `b` equal bit for bit (arrays by their bytes), with the first difference named."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a)} vs {sorted(b)}"
        for k in a:
            assert_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list) and a and isinstance(a[0], np.ndarray):
        assert len(a) == len(b), f"{where}: {len(a)} vs {len(b)} arrays"
        for i, (x, y) in enumerate(zip(a, b)):
            assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), f"{where}[{i}] differs"
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), f"{where} differs"
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def train(fault: str, args: list[str], env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m lif_sbi.train ARGS` in a subprocess with `fault` injected (see the module's docstring)."""
    return subprocess.run([sys.executable, str(Path(__file__).resolve()), fault, "--", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
