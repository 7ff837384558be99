"""Atomic file writes: a file is written under a temporary name beside its target, then renamed, so
nothing is ever half-written. Light on purpose (NumPy only): the parity command's parent process
and the configuration code use it without loading Keras."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

# The process's umask, read once: a temporary file from mkstemp is private (0600), and the file it
# becomes gets the permissions a plain open() would have given it.
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then move it into place; the
    temporary file is removed when ``write`` fails. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)


def atomic_write_json(path, obj) -> Path:
    """``obj`` as indented, strict JSON (no NaN or inf), written atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def atomic_save_npz(path, *arrays: np.ndarray, **named: np.ndarray) -> Path:
    """``np.savez(path, *arrays, **named)``, written atomically (``path`` keeps its own name: NumPy
    adds no ``.npz`` to an open file)."""

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, *arrays, **named)

    return atomic_write(path, write)


def atomic_save_keras(model, path) -> Path:
    """``model.save(path)`` for a ``.keras`` file, atomically: Keras needs the real suffix, so the
    model is saved to ``<stem>.tmp.keras`` and renamed over ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name[: -len(".keras")] + ".tmp.keras")
    model.save(str(tmp))
    os.replace(tmp, path)
    return path


def remove_tree(path) -> None:
    """Remove a folder and everything in it, if it exists."""
    shutil.rmtree(path, ignore_errors=True)
