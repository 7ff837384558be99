"""The training loss curve, BayesFlow's `loss` plot."""

from __future__ import annotations

import types
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import bayesflow as bf

from ._common import _save


def plot_loss(history: Mapping[str, Sequence[float]], path) -> Path:
    """Training (and validation, if `val_loss` is present) loss per epoch, BayesFlow's `loss` plot.

    history: a Keras History's `.history` dict (keys "loss", optionally "val_loss", ...).
    """
    history = dict(history or {})
    if not history.get("loss"):
        raise ValueError(f"history needs a non-empty 'loss' list; got keys {sorted(history)}")
    clean = {k: [float(v) for v in history[k]] for k in ("loss", "val_loss") if history.get(k)}
    # bf.diagnostics.plots.loss reads `.history` of a keras History; a namespace carries the dict.
    with warnings.catch_warnings():
        # one epoch gives it identical x-limits; matplotlib widens them itself, after a warning
        warnings.filterwarnings("ignore", message="Attempting to set identical low and high xlims")
        fig = bf.diagnostics.plots.loss(types.SimpleNamespace(history=clean), figsize=(8, 3.5))
    return _save(fig, path)
