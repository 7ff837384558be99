"""Axon ABF current-clamp recordings (pyabf): every sweep's voltage with its command channel as the injected current."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import Recording
from ..errors import InputError

_VOLTS = {"V": 1.0, "mV": 1e-3, "uV": 1e-6, "µV": 1e-6}
_AMPERES = {"A": 1.0, "nA": 1e-9, "pA": 1e-12, "uA": 1e-6, "µA": 1e-6}


def _open(path: Path):
    import pyabf

    try:
        # pyabf prints to stdout on some malformed files; the user gets one line instead
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            return pyabf.ABF(str(path))
    except Exception as exc:  # noqa: BLE001  (pyabf raises many kinds on a file that is not ABF)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: could not be read as an ABF file ({reason})") from None


def read_abf(path: Path, sweeps: Sequence[int] | None = None, channel: int = 0) -> list[Recording]:
    """Each sweep (all, or `sweeps`, 0-based) of ABF channel `channel`: voltage in V, the command
    channel (the protocol's injected current) in A, the file's sampling step."""
    abf = _open(path)
    chosen = list(range(abf.sweepCount)) if sweeps is None else list(sweeps)
    bad = [s for s in chosen if not 0 <= s < abf.sweepCount]
    if bad:
        raise InputError(f"--sweeps {bad[0]}: {path} holds sweeps 0 to {abf.sweepCount - 1}")
    if not 0 <= channel < abf.channelCount:
        raise InputError(f"{path}: has no channel {channel} (channels 0 to {abf.channelCount - 1})")
    out = []
    for s in chosen:
        abf.setSweep(s, channel=channel)
        v_unit, i_unit = abf.sweepUnitsY.strip(), abf.sweepUnitsC.strip()
        if v_unit not in _VOLTS:
            raise InputError(f"{path}: channel {channel} is recorded in {v_unit!r}: expected a voltage (current clamp), in V or mV")
        current = None
        if i_unit in _AMPERES:
            current = np.asarray(abf.sweepC, dtype=np.float64) * _AMPERES[i_unit]
        out.append(Recording(f"{path.name} sweep {s}", np.asarray(abf.sweepY, dtype=np.float64) * _VOLTS[v_unit],
                             1.0 / abf.sampleRate, current, 0.0))
    return out
