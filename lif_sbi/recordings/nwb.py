"""NWB current-clamp recordings (pynwb): each CurrentClampSeries with the stimulus that drove it."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import Recording
from ..errors import InputError

#: timestamps' steps may differ from their median by this share before the series counts as not uniform
UNIFORM_TOLERANCE = 0.01
#: factor to V / A for each unit a file may name (lower case); NWB ≥ 2.1 fixes "volts" and "amperes",
#: older writers named others, and pynwb replaces them with the fixed unit on reading without scaling
_UNITS = {
    "volts": {"volts": 1.0, "volt": 1.0, "v": 1.0, "mv": 1e-3, "millivolts": 1e-3, "millivolt": 1e-3},
    "amperes": {"amperes": 1.0, "ampere": 1.0, "amps": 1.0, "a": 1.0, "na": 1e-9, "nanoamperes": 1e-9,
                "pa": 1e-12, "picoamperes": 1e-12},
}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _unreadable(path: Path, exc: BaseException, what: str = "") -> InputError:
    return InputError(f"{path}: could not be read as NWB: {what}{_first_line(exc)}: expected an NWB 2 (HDF5) file")


def _kind(obj) -> str:
    return getattr(obj, "neurodata_type", None) or type(obj).__name__


def _sorted(series: list) -> list:
    """Series ordered by sweep_number when all have one (then by name), else by name."""
    if series and all(s.sweep_number is not None for s in series):
        return sorted(series, key=lambda s: (int(s.sweep_number), s.name))
    return sorted(series, key=lambda s: s.name)


def _unit_scale(path: Path, series, unit: str) -> float:
    """The factor to SI of the unit the file itself names for `series` (pynwb hides it), or InputError."""
    attrs = getattr(series.data, "attrs", None)  # an h5py.Dataset when read from a file
    named = attrs.get("unit", unit) if attrs is not None else unit
    named = named.decode() if isinstance(named, bytes) else str(named)
    scale = _UNITS[unit].get(named.strip().lower())
    if scale is None:
        raise InputError(f"{path}: {_kind(series)} '{series.name}' is in unit {named!r}: expected {unit!r} "
                         f"(or one of {', '.join(sorted(_UNITS[unit]))})")
    return scale


def _values(path: Path, series, unit: str) -> np.ndarray:
    """The series' samples in SI (V or A): data * conversion + offset, times the file's unit factor."""
    name = f"{_kind(series)} '{series.name}'"
    try:
        raw = np.array(series.data[:], dtype=np.float64)
    except Exception as exc:  # a corrupt dataset, a dtype that is not numbers
        raise _unreadable(path, exc, f"{name}: ") from None
    if raw.ndim != 1:
        raise InputError(f"{path}: {name} has shape {raw.shape}: expected one sample per time point")
    if raw.size == 0:
        raise InputError(f"{path}: {name} holds no samples: expected a recorded sweep")
    conversion = getattr(series, "conversion", None)
    offset = getattr(series, "offset", None)  # NWB 2.5+; older files and pynwb versions have none
    conversion, offset = 1.0 if conversion is None else float(conversion), 0.0 if offset is None else float(offset)
    return (raw * conversion + offset) * _unit_scale(path, series, unit)


def _time_base(path: Path, series) -> tuple[float | None, float]:
    """(dt_s, start_s) of a series: from its rate, or from uniform timestamps; InputError if not uniform."""
    if series.rate is not None:
        return 1.0 / float(series.rate), float(series.starting_time or 0.0)
    if series.timestamps is None:
        return None, 0.0
    t = np.array(series.timestamps[:], dtype=np.float64)
    if t.size < 2:
        return None, float(t[0]) if t.size else 0.0
    d = np.diff(t)
    step = float(np.median(d))
    if step <= 0 or np.max(np.abs(d - step)) > UNIFORM_TOLERANCE * step:
        raise InputError(f"{path}: CurrentClampSeries '{series.name}' has timestamps that are not uniform (steps from "
                         f"{d.min() * 1e3:.3g} to {d.max() * 1e3:.3g} ms): expected a rate or uniform timestamps")
    return step, float(t[0])


def _stimuli(ccs: list, stims: list) -> list:
    """For each ordered CurrentClampSeries, its CurrentClampStimulusSeries or None."""
    numbered = all(s.sweep_number is not None for s in ccs + stims)
    if not numbered:
        return list(_sorted(stims)) if len(stims) == len(ccs) else [None] * len(ccs)
    out = []
    for s in ccs:
        match = [st for st in stims if int(st.sweep_number) == int(s.sweep_number)]
        if len(match) > 1:  # several electrodes in one sweep: the stimulus on the same electrode
            match = [st for st in match if getattr(st, "electrode", None) is getattr(s, "electrode", None)]
        out.append(match[0] if len(match) == 1 else None)
    return out


def _recordings(path: Path, nwbfile, sweeps: Sequence[int] | None) -> list[Recording]:
    from pynwb.icephys import CurrentClampSeries, CurrentClampStimulusSeries

    acquired = list(nwbfile.acquisition.values())
    ccs = _sorted([s for s in acquired if isinstance(s, CurrentClampSeries)])
    if not ccs:
        held = ", ".join(f"{_kind(s)} '{s.name}'" for s in sorted(acquired, key=lambda s: s.name)[:6])
        more = f" and {len(acquired) - 6} more" if len(acquired) > 6 else ""
        holds = f"holds {held}{more}" if acquired else "holds no acquisition series"
        raise InputError(f"{path}: {holds}; expected CurrentClampSeries (a current-clamp recording)")
    stims = _stimuli(ccs, [s for s in nwbfile.stimulus.values() if isinstance(s, CurrentClampStimulusSeries)])
    picked = range(len(ccs)) if sweeps is None else list(sweeps)
    for k in picked:
        if not 0 <= k < len(ccs):
            raise InputError(f"{path}: sweep {k} is out of range: the file holds {len(ccs)} CurrentClampSeries, "
                             f"sweeps 0 to {len(ccs) - 1}")
    out = []
    for k in picked:
        series, stim = ccs[k], stims[k]
        voltage = _values(path, series, "volts")
        dt_s, start_s = _time_base(path, series)
        current = None
        if stim is not None:
            current = _values(path, stim, "amperes")
            if len(current) != len(voltage):
                raise InputError(f"{path}: CurrentClampStimulusSeries '{stim.name}' has {len(current)} samples and "
                                 f"CurrentClampSeries '{series.name}' {len(voltage)}: expected one current sample "
                                 "per voltage sample")
        out.append(Recording(f"{path.name} sweep {k}", voltage, dt_s, current, start_s))
    return out


def read_nwb(path: Path, sweeps: Sequence[int] | None = None) -> list[Recording]:
    """The current-clamp sweeps of an NWB file, in sweep_number order (by name when a series lacks
    one), each with the CurrentClampStimulusSeries of the same sweep as its current (None when
    there is none). `sweeps`: 0-based indices into that order (all when None). Bad files,
    missing series and out-of-range sweeps raise InputError with one line; pynwb/hdmf warnings
    are silenced."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file: expected an NWB (.nwb) file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import pynwb
        except ImportError:
            raise InputError(f"{path}: reading NWB files needs pynwb: pip install pynwb") from None
        try:
            io = pynwb.NWBHDF5IO(str(path), "r", load_namespaces=True)
        except Exception as exc:
            raise _unreadable(path, exc) from None
        with io:  # closes the HDF5 file; every array is copied out before
            try:
                nwbfile = io.read()
            except Exception as exc:
                raise _unreadable(path, exc) from None
            return _recordings(path, nwbfile, sweeps)
