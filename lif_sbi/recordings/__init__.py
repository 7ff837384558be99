"""A scientist's recordings, read from their files (text, NumPy, ABF, NWB) onto a model's time grid."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError

__all__ = ["InputError", "Recording"]


@dataclass(frozen=True)
class Recording:
    """One recorded sweep as its file holds it.

    voltage_v: (T,) float64 in V. dt_s: the sampling step in s, None when the file has no time
    base. current_a: (T,) float64 in A, the injected current when the file holds it. start_s:
    the time of the first sample on the file's own clock (0 when it has none). name: what
    messages and tables call it, e.g. "17o05028_ic_steps.abf sweep 3".
    """

    name: str
    voltage_v: np.ndarray
    dt_s: float | None
    current_a: np.ndarray | None = None
    start_s: float = 0.0


VOLTAGE_UNITS = {"V": 1.0, "mV": 1e-3}
CURRENT_UNITS = {"A": 1.0, "nA": 1e-9, "pA": 1e-12}
SUFFIXES = (".npy", ".npz", ".csv", ".txt", ".abf", ".nwb")


def read(path, *, units: str | None = None, current_units: str = "pA", dt_s: float | None = None, time_units: str | None = None,
         sweeps=None, columns: str | None = None, notes: list[str] | None = None) -> list[Recording]:
    """The recordings in one file, in SI units, as its format holds them.

    .npy/.npz (NumPy), .csv/.txt (one voltage column; time, voltage and current columns; or one
    trace per row; a header line is fine): voltage in `units` ('V' or 'mV'; default V), current
    in `current_units`, time base from a time column or `dt_s` (s). .abf (pyabf) and .nwb
    (pynwb) carry their units, time base and command current; `sweeps` picks sweeps (0-based).
    `notes` collects how the file was read (one line each).
    """
    from pathlib import Path

    path = Path(path)
    notes = [] if notes is None else notes
    if path.is_dir():
        raise InputError(f"{path}: is a folder: expected a recording file ({', '.join(SUFFIXES)})")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty")
    suffix = path.suffix.lower()
    if suffix in (".abf", ".nwb"):
        if units is not None:
            raise InputError(f"--units {units}: {path.name} carries its own units; drop --units")
        if suffix == ".abf":
            from .abf import read_abf

            return read_abf(path, sweeps)
        from .nwb import read_nwb

        return read_nwb(path, sweeps)
    if sweeps is not None:
        raise InputError(f"--sweeps: {path.name} is not an ABF or NWB file; it has no sweeps (one trace per row instead)")
    from . import text

    scales = {"v_scale": VOLTAGE_UNITS[units or "V"], "i_scale": CURRENT_UNITS[current_units]}
    if suffix in (".npy", ".npz"):
        return text.read_numpy(path, dt_s=dt_s, **scales)
    if suffix in (".csv", ".txt"):
        recs, how = text.read_table(path, dt_s=dt_s, time_units=time_units, columns=columns, **scales)
        notes.extend(how)
        return recs
    raise InputError(f"{path}: unknown format {path.suffix!r}: expected one of {', '.join(SUFFIXES)}")


def read_current(path, *, current_units: str, dt_s: float | None) -> np.ndarray:
    """Injected currents from their own file (`--current`): (N, T) in A, one per trace, on the
    recordings' sampling step."""
    recs = read(path, units="V", dt_s=dt_s)  # voltage scale 1: the values are taken as they are
    rows = [r.voltage_v * CURRENT_UNITS[current_units] for r in recs]
    if len({len(r) for r in rows}) != 1:
        raise InputError(f"--current {path}: its traces differ in length: expected one current per trace, all of one length")
    out = np.stack(rows)
    if not np.isfinite(out).all():
        k = np.argwhere(~np.isfinite(out))[0]
        raise InputError(f"--current {path}: sample {k[1]} of trace {k[0]} is {out[tuple(k)]}: expected finite numbers")
    return out
