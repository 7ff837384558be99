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


WRITING = "lif_sbi: while writing this file"


def atomic_write(path, write: Callable[[str], object], suffix: str = ".tmp") -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path`` (named ``.<name>.<random><suffix>``),
    then move it into place; the temporary file is removed when ``write`` fails, and an OSError
    that names no file (a full disk seen by ``write``) is given ``path`` as its filename, so the
    error line says which file could not be written. Every file a training run writes goes
    through here. Returns the path."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(exc, OSError):
            if not exc.filename or Path(exc.filename).name.startswith(f".{path.name}."):
                exc.filename = str(path)  # the file meant, not its temporary name (where mkstemp failed)
            exc.add_note(WRITING)  # errors.os_error_line then says "cannot write"
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
    """``model.save(path)`` for a ``.keras`` file, atomically (Keras needs the real suffix, so the
    temporary file ends in ``.tmp.keras``)."""
    return atomic_write(path, lambda tmp: model.save(tmp), suffix=".tmp.keras")


def remove_leftovers(folder) -> list[Path]:
    """Remove the temporary files and folders a killed process left in `folder` (names ending in
    ``.tmp`` or ``.tmp.keras``: this module's, and a checkpoint's half-made ``epoch_NNNN.tmp``);
    returns what was removed."""
    found = [p for p in Path(folder).rglob("*") if p.name.endswith((".tmp", ".tmp.keras"))]
    for p in found:
        if p.is_dir():
            remove_tree(p)
        else:
            p.unlink(missing_ok=True)
    return found


def remove_tree(path) -> None:
    """Remove a folder and everything in it, if it exists."""
    shutil.rmtree(path, ignore_errors=True)
