"""Keep third-party start-up chatter (TensorFlow's C++ log lines, BayesFlow's notes and bars) off the console."""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import tempfile
from contextlib import contextmanager

#: TensorFlow's C++ start-up lines, written straight to file descriptor 2 before absl's logging is
#: initialised, where TF_CPP_MIN_LOG_LEVEL does not reach them: info/warning records
#: ("I0000 00:00:...  port.cc:153] oneDNN custom operations are on ..."), absl's note about them,
#: and the CUDA probe's error on a machine without a GPU driver. Anything else passes through.
TF_STARTUP_NOISE = re.compile(
    r"^(?:[IW]\d{4} \d\d:\d\d:\d+\.\d+\s"
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|E\d{4} \d\d:\d\d:\d+\.\d+\s.*(?:failed call to cuInit|Unable to register cu))"
)


def libraries() -> None:
    """Environment and logging switches, set once per process before Keras or BayesFlow load."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # BayesFlow draws a tqdm bar for every sample() call ("Summarizing", "Sampling"); tqdm reads
    # its defaults from TQDM_* variables. Our own bars pass `disable` explicitly, so they stay.
    os.environ.setdefault("TQDM_DISABLE", "1")
    if os.environ["TQDM_DISABLE"] == "1" and "tqdm.std" in sys.modules:
        _disable_imported_tqdm(sys.modules["tqdm.std"].tqdm)
    # BayesFlow raises its logger to INFO at import and configures the root logger only if it
    # has no handler; give root one that drops BayesFlow's notes below ERROR.
    handler = logging.StreamHandler()
    handler.addFilter(lambda record: not (record.name.startswith("bayesflow") and record.levelno < logging.ERROR))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])


def _disable_imported_tqdm(tqdm_class) -> None:
    """What TQDM_DISABLE=1 does, for a tqdm imported before it was set (importing torch imports
    tqdm, through torch.hub): tqdm reads its TQDM_* variables once, at import, into a
    ``partialmethod`` of ``tqdm.__init__`` (tqdm.utils.envwrap); this wraps the same way now.
    A bar that passes ``disable`` itself keeps its own choice."""
    init = tqdm_class.__dict__["__init__"]
    if not isinstance(init, functools.partialmethod):  # tqdm found no TQDM_* variable at import
        init = functools.partialmethod(init)
    if init.keywords.get("disable") is not True:  # else done already, or by tqdm itself
        tqdm_class.__init__ = functools.partialmethod(init.func, *init.args, **{**init.keywords, "disable": True})


@contextmanager
def startup_lines():
    """Run a block (an import that may load TensorFlow) with fd 2 captured; pass on all but TF's start-up noise.

    Written by hand: neither Keras nor TensorFlow offers a switch for these lines. Python-level
    warnings and errors raised inside the block still reach stderr, after it ends.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().decode(errors="replace").splitlines(keepends=True) if not TF_STARTUP_NOISE.match(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
