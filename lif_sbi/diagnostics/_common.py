"""Helpers shared by the diagnostics: input checks, display units, seeded and quiet blocks, PNG saving."""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from ..files import atomic_write
from ..priors import DISPLAY_SCALE, INDEX, N_PARAMS, PARAMETERS

DPI = 100

# Voltage traces and time axes use the display units of the parameters that share their SI unit
# (V -> mV like E_L, s -> ms like t_ref), so no unit or scale is retyped here.
_VOLT = PARAMETERS[INDEX["E_L"]]
_TIME = PARAMETERS[INDEX["t_ref"]]

# Layout shared by the 2 x 3 per-parameter panels of BayesFlow's plots.
_GRID = {"num_row": 2, "num_col": 3, "label_fontsize": 11, "title_fontsize": 12, "tick_fontsize": 9}


def _label(i: int) -> str:
    """'C_m [pF]': the parameter's name with its display unit, for titles and table heads."""
    p = PARAMETERS[i]
    return f"{p.name} [{p.display_unit}]"


def _check_pair(theta_true, draws) -> tuple[np.ndarray, np.ndarray]:
    theta_true = np.asarray(theta_true, dtype=np.float64)
    draws = np.asarray(draws, dtype=np.float64)
    if theta_true.ndim != 2 or theta_true.shape[1] != N_PARAMS:
        raise ValueError(f"theta_true must have shape (N, {N_PARAMS}) in SI units; got {theta_true.shape}")
    if draws.ndim != 3 or draws.shape[0] != theta_true.shape[0] or draws.shape[2] != N_PARAMS:
        raise ValueError(
            f"draws must have shape (N, S, {N_PARAMS}) = ({theta_true.shape[0]}, S, {N_PARAMS}) in SI units; "
            f"got {draws.shape}"
        )
    if theta_true.shape[0] < 2 or draws.shape[1] < 2:
        raise ValueError(f"need at least 2 data sets and 2 draws each; got N={draws.shape[0]}, S={draws.shape[1]}")
    if not (np.isfinite(theta_true).all() and np.isfinite(draws).all()):
        raise ValueError("theta_true and draws must be finite (no NaN or inf)")
    return theta_true, draws


def _to_display(theta_true, draws):
    return theta_true * DISPLAY_SCALE, draws * DISPLAY_SCALE


@contextlib.contextmanager
def _seeded_global_numpy(seed: int | None):
    """Seed NumPy's global RNG for the block and restore its state afterwards.

    BayesFlow's log-gamma null distribution and ECDF bands draw from `np.random` directly;
    this makes them reproducible without disturbing anybody else's random stream.
    """
    if seed is None:
        yield
        return
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


@contextlib.contextmanager
def _quiet_bayesflow():
    """Raise the 'bayesflow' logger to ERROR for the block (informational warnings only)."""
    logger = logging.getLogger("bayesflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _float(x) -> float | None:
    """A plain Python float, or None where the value is undefined (NaN/inf), for strict JSON."""
    x = float(x)
    return x if math.isfinite(x) else None


def _save(fig: plt.Figure, path) -> Path:
    """Save `fig` as PNG atomically, close it, return the path."""
    try:
        return atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    finally:
        plt.close(fig)
