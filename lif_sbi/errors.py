"""The faults the command-line tools turn into one line and an exit code: bad input (2) and the environment (4)."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
from pathlib import Path

EXIT_INPUT = 2  # bad input: an argument, a configuration, a file or run folder the user named
EXIT_ENVIRONMENT = 4  # the machine: a file that cannot be written or read (no space, read-only, permission), no Keras backend

# the Keras backends lif_sbi runs under: backends/__init__.py's modules, named here without importing Keras
KERAS_BACKENDS = ("torch", "tensorflow", "jax")
INSTALL = {"torch": "bash setup.sh", "tensorflow": "bash setup.sh test (or pip install -e '.[tensorflow]')",
           "jax": "pip install -e '.[jax]'"}


class InputError(Exception):
    """Bad input from the user (a file, an argument, a run folder): one line, exit code 2."""


class EnvironmentFault(Exception):
    """What the machine does not allow (a Keras backend not installed): one line, exit code 4."""


def os_error_line(exc: OSError) -> str:
    """An OSError as one line naming the path and the cause, e.g. "cannot write
    results/x/metrics.json: No space left on device (ENOSPC)"."""
    from .files import WRITING

    path = exc.filename or "a file"
    code = errno.errorcode.get(exc.errno, "") if exc.errno else ""
    cause = (exc.strerror or str(exc) or type(exc).__name__) + (f" ({code})" if code else "")
    verb = "write" if WRITING in getattr(exc, "__notes__", ()) else "write or read"
    return f"cannot {verb} {path}: {cause}"


def installed_backends() -> list[str]:
    """The Keras backends of KERAS_BACKENDS whose framework is installed."""
    return [b for b in KERAS_BACKENDS if importlib.util.find_spec(b) is not None]


def keras_backend() -> str:
    """The Keras backend this process will load (KERAS_BACKEND, else ~/.keras/keras.json, else
    Keras' default, TensorFlow), checked before Keras is imported: EnvironmentFault where it is not
    one lif_sbi runs under or is not installed, naming those that are and how to get the others.
    (Importing Keras with a bad or missing backend prints 30-50 lines of traceback.)"""
    name = os.environ.get("KERAS_BACKEND")
    source = "KERAS_BACKEND"
    if not name:
        config = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "keras.json"
        try:
            name, source = json.loads(config.read_text()).get("backend", "tensorflow"), str(config)
        except (OSError, ValueError, AttributeError):
            name, source = "tensorflow", "Keras' default (KERAS_BACKEND is not set)"
    installed = installed_backends()
    have = f"installed here: {', '.join(installed) or 'none'}"
    if name not in KERAS_BACKENDS:
        raise EnvironmentFault(f"{source} = {name!r}: lif_sbi runs under the Keras backends {', '.join(KERAS_BACKENDS)} ({have}); "
                               "set e.g. KERAS_BACKEND=torch")
    if name not in installed:
        raise EnvironmentFault(f"{source} = {name!r}, but {name} is not installed ({have}); install it with {INSTALL[name]}, "
                               f"or pick an installed one, e.g. KERAS_BACKEND={installed[0] if installed else 'torch'}")
    return name
