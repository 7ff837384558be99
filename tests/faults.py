"""Fault injection for training runs: `python tests/faults.py FAULT -- TRAIN_ARGS...` runs
`python -m lif_sbi.train TRAIN_ARGS` with one fault injected at a named point, by patching the
project's own functions in this process (nothing in the package knows about it):

- ``kill:simulation``, ``kill:epoch=E,batch=B``, ``kill:checkpoint=E``, ``kill:calibration``,
  ``kill:validity``, ``kill:diagnostics``, ``kill:report``: SIGKILL of this process, by its own
  pid, after the first simulated chunk; as batch B of epoch E (from 0) is fetched; inside epoch
  E's checkpoint write (its weights written, its optimizer state not); as the width fit, the
  validity fit, the spike-time check (the diagnostics' figures written) or the report starts.
- ``fail:NAME:ERRNO``: every atomic write (`lif_sbi.files.atomic_write`, which every file the
  project writes goes through) of a file named NAME (a glob, e.g. ``epoch_*`` or ``*.png``)
  fails with that OSError (ENOSPC, EROFS, EACCES, EPERM, EDQUOT).
- ``none``: no fault.

The tests (`tests/test_faults.py`) and `bench/fault_table.py` use `FAULTS` and `train` below.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Kill points and write faults the tests and the table exercise, in a run's order.
KILL_POINTS = ("simulation", "epoch=1,batch=1", "checkpoint=2", "calibration", "validity", "diagnostics", "report")


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


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


def install_kill(point: str) -> None:
    from lif_sbi import batches, calibration, checkpoints, diagnostics, report, simulator, validity

    if point == "simulation":
        _after(simulator, "simulate_batch")
    elif point.startswith("epoch="):
        epoch, batch = (int(part.split("=")[1]) for part in point.split(","))
        original = batches.Batches.__getitem__

        def getitem(self, item):
            if self.epoch == epoch and item == batch:
                _kill()
            return original(self, item)

        batches.Batches.__getitem__ = getitem
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

    def atomic_write(path, write, suffix=".tmp"):
        if fnmatch.fnmatch(Path(path).name, name) or fnmatch.fnmatch(Path(path).parent.name, name):
            # as the OS reports it: errno, message, and the file it could not write
            raise OSError(number, os.strerror(number), str(path))
        return original(path, write, suffix)

    files.atomic_write = atomic_write


def main(argv: list[str]) -> int:
    fault, rest = argv[0], argv[argv.index("--") + 1:]
    from lif_sbi import train

    if fault.startswith("kill:"):
        install_kill(fault[5:])
    elif fault.startswith("fail:"):
        name, code = fault[5:].rsplit(":", 1)
        install_failure(name, code)
    elif fault != "none":
        raise SystemExit(f"unknown fault {fault!r}")
    return train.main(rest)


def train(fault: str, args: list[str], env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m lif_sbi.train ARGS` in a subprocess with `fault` injected (see the module's docstring)."""
    return subprocess.run([sys.executable, str(Path(__file__).resolve()), fault, "--", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
