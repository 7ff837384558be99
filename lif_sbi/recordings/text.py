"""Recordings in plain files: NumPy .npy/.npz, and .csv/.txt tables of voltage, time and current columns or one trace per row."""

from __future__ import annotations

import re
import warnings
import zipfile
from pathlib import Path

import numpy as np

from . import Recording
from ..errors import InputError

#: header names recognised in a table's first line (case-insensitive), by column role
_ROLES = {"t": r"t|time.*|times?_?\(?m?s\)?", "v": r"v|vm|volt.*|v_?m|membrane.*|potential.*", "i": r"i|current.*|cmd.*|command.*|stim.*"}
#: a time column's steps may differ from their median by this share before the grid counts as not uniform
UNIFORM_TOLERANCE = 0.01


def _role(name: str) -> str | None:
    name = re.sub(r"\s*[\[(].*[\])]\s*$", "", name.strip().strip('"').lower())  # "time (ms)" -> "time"
    return next((role for role, pattern in _ROLES.items() if re.fullmatch(pattern, name)), None)


def _load_table(path: Path) -> tuple[np.ndarray, list[str] | None]:
    """The numbers of a .csv/.txt table (rows, columns) and its header names, if its first line has words."""
    text = path.read_text(errors="replace")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise InputError(f"{path}: the file is empty: expected numbers, one voltage sample per row or one trace per row")
    delimiter = "," if "," in lines[0] or path.suffix == ".csv" else None
    header = None
    try:
        float((lines[0].split(delimiter) or ["x"])[0])
    except ValueError:
        header, lines = [c.strip() for c in lines[0].split(delimiter)], lines[1:]
        if not lines:
            raise InputError(f"{path}: holds a header line and no numbers") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x = np.loadtxt(lines, delimiter=delimiter, ndmin=2, dtype=np.float64)
    except ValueError as exc:
        first = str(exc).splitlines()[0]
        raise InputError(f"{path}: could not be read as a table of numbers ({first})") from None
    if header is not None and len(header) != x.shape[1]:
        header = None
    return x, header


def time_step(t: np.ndarray, where: str, time_scale: float) -> tuple[float, float]:
    """The uniform step (s) and start (s) of a time column `t` (file units × `time_scale`), or InputError."""
    t = np.asarray(t, dtype=np.float64) * time_scale
    d = np.diff(t)
    if len(d) == 0:
        raise InputError(f"{where}: a time column needs at least two samples")
    repeats = np.flatnonzero(d == 0)
    if len(repeats) and np.all(d >= 0):
        raise InputError(f"{where}: the time column repeats times ({len(repeats)} of {len(d)} steps are 0, first at row {repeats[0] + 2}), "
                         "as a variable-step simulator writes: expected a uniform, increasing time base; resample it onto one first")
    bad = np.flatnonzero(d <= 0)
    if len(bad):
        raise InputError(f"{where}: the time column is not increasing (row {bad[0] + 2}: {t[bad[0]]:g} s then "
                         f"{t[bad[0] + 1]:g} s): expected a uniform, increasing time base")
    step = float(np.median(d))
    if np.max(np.abs(d - step)) > UNIFORM_TOLERANCE * step:
        raise InputError(f"{where}: the time column is not uniform (steps from {d.min() * 1e3:.3g} to {d.max() * 1e3:.3g} ms, "
                         "as a variable-step simulator writes): resample it onto a uniform grid first")
    return step, float(t[0])


def _time_scale(t: np.ndarray, time_units: str | None) -> tuple[float, str]:
    """The factor to seconds for a time column, and how it was decided."""
    if time_units is not None:
        return {"s": 1.0, "ms": 1e-3}[time_units], f"time column in {time_units} (--time-units)"
    step = float(np.median(np.diff(t))) if len(t) > 1 else 1.0
    if step < 1e-3:  # below 1 ms per sample: seconds (1 kHz and faster); otherwise milliseconds
        return 1.0, "time column read as s (its steps are below 1e-3; pass --time-units ms if not)"
    return 1e-3, "time column read as ms (its steps are 1e-3 or more; pass --time-units s if not)"


def _columns(x: np.ndarray, header, columns: str | None, path: Path) -> dict[str, int] | None:
    """Which column is time, voltage and current ({'t': 0, 'v': 1, ...}), or None: one trace per row."""
    if columns is not None:
        roles = [c.strip() for c in columns.split(",")]
        if sorted(set(roles)) != sorted(roles) or not set(roles) <= {"t", "v", "i"} or "v" not in roles:
            raise InputError(f"--columns {columns!r}: expected column roles t, v, i separated by commas, v among them (e.g. t,v,i)")
        if len(roles) != x.shape[1]:
            raise InputError(f"--columns {columns!r} names {len(roles)} column(s); {path} has {x.shape[1]}")
        return {r: k for k, r in enumerate(roles)}
    if header is not None:
        found = {_role(h): k for k, h in enumerate(header)}
        if "v" in found and None not in found:
            return {r: k for r, k in found.items()}
    if x.shape[1] == 1:
        return {"v": 0}
    # a time column rises nearly everywhere (a glitch in it is then reported by `time_step`)
    d0 = np.diff(x[:, 0])
    increasing_first = x.shape[0] > 2 and bool(np.all(d0 >= 0) or np.mean(d0 > 0) >= 0.9)
    if x.shape[1] in (2, 3) and x.shape[0] > x.shape[1]:
        if not increasing_first:
            raise InputError(f"{path}: {x.shape[1]} columns whose first is not a time column: pass --columns (e.g. v,i) to say what they hold")
        return {"t": 0, "v": 1} if x.shape[1] == 2 else {"t": 0, "v": 1, "i": 2}
    return None


def read_table(path: Path, *, v_scale: float, i_scale: float, dt_s: float | None, time_units: str | None,
               columns: str | None) -> tuple[list[Recording], list[str]]:
    """Recordings of a .csv/.txt table: one voltage column; time and voltage (and current) columns;
    or one trace per row. Returns (recordings, notes on how the file was read)."""
    x, header = _load_table(path)
    roles = _columns(x, header, columns, path)
    notes = []
    if roles is None:  # one trace per row
        return [Recording(f"{path.name} row {k}", row * v_scale, dt_s) for k, row in enumerate(x)], notes
    start = 0.0
    if "t" in roles:
        scale, how = _time_scale(x[:, roles["t"]], time_units)
        notes.append(how)
        step, start = time_step(x[:, roles["t"]], str(path), scale)
        if dt_s is not None and abs(step - dt_s) > 1e-6 * dt_s:
            raise InputError(f"--dt {dt_s:g} s disagrees with {path}'s time column ({step:g} s per sample): drop --dt")
        dt_s = step
    current = x[:, roles["i"]] * i_scale if "i" in roles else None
    return [Recording(path.name, x[:, roles["v"]] * v_scale, dt_s, current, start)], notes


def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: np.asarray(z[k]) for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npz file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


def read_numpy(path: Path, *, v_scale: float, i_scale: float, dt_s: float | None) -> list[Recording]:
    """Recordings of a .npy (T,), (N, T) or (N, T, 1) array, or a .npz holding `voltage` (or `traces`)
    of those shapes, optionally `current` of the same shape and `dt_s` (s)."""
    if path.suffix == ".npz":
        z = _npz_arrays(path)
        key = next((k for k in ("voltage", "traces") if k in z), None)
        if key is None:
            raise InputError(f"{path}: holds {sorted(z)}; expected an array named 'voltage' (or 'traces'), optionally 'current' and 'dt_s'")
        v, cur = z[key], z.get("current")
        if "dt_s" in z:
            file_dt = float(np.asarray(z["dt_s"]).reshape(-1)[0])
            if dt_s is not None and abs(file_dt - dt_s) > 1e-6 * dt_s:
                raise InputError(f"--dt {dt_s:g} s disagrees with {path}'s dt_s ({file_dt:g} s): drop --dt")
            dt_s = file_dt
    else:
        try:
            v = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            reason = "it holds Python objects, not numbers" if "pickle" in str(exc) else str(exc).splitlines()[0]
            raise InputError(f"{path}: not a readable .npy array of numbers ({reason})") from None
        cur = None
    v = _as_rows(v, path, "voltage")
    cur = None if cur is None else _as_rows(cur, path, "current")
    if cur is not None and cur.shape != v.shape:
        raise InputError(f"{path}: 'current' has shape {cur.shape}, the voltage {v.shape}: expected the same shape")
    many = len(v) > 1
    return [Recording(f"{path.name} trace {k}" if many else path.name, v[k] * v_scale, dt_s,
                      None if cur is None else cur[k] * i_scale) for k in range(len(v))]


def _as_rows(x: np.ndarray, path: Path, what: str) -> np.ndarray:
    """(T,), (N, T) or (N, T, 1) numbers → (N, T) float64, or InputError."""
    if not np.issubdtype(np.asarray(x).dtype, np.number) or np.iscomplexobj(x):
        raise InputError(f"{path}: the {what} array holds {np.asarray(x).dtype}, expected real numbers")
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    x = x[None] if x.ndim == 1 else x
    if x.ndim != 2 or x.size == 0:
        raise InputError(f"{path}: the {what} array has shape {np.shape(x)}: expected (T,), (N, T) or (N, T, 1), one trace per row")
    return x
