"""Recordings onto a model's time grid: checked, their action potentials handled, resampled (anti-aliased) and windowed."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
from scipy import signal

from . import Recording
from .. import spikes as spike_tools
from ..errors import InputError

MAX_RESAMPLING_DENOMINATOR = 1000  # the rational resampling factor up/down has down, up ≤ this


@dataclass(frozen=True)
class Grid:
    """A model's time grid: `n_samples` samples every `dt_s` s. `default_start_s`: where its
    window starts in a recording when none is given (a model trained on a file's command
    waveform takes the window it was trained on), None: the recording must fit, or `--window`."""

    dt_s: float
    n_samples: int
    default_start_s: float | None = None

    @property
    def duration_s(self) -> float:
        return (self.n_samples - 1) * self.dt_s


@dataclass
class Prepared:
    """Recordings on a model's grid. voltage_v: (N, T) V. current_a: (N, T) A, or None when no
    recording holds one. spike_counts: (N,) action potentials detected in each window.
    spike_peak_v: (N,) their highest peak in V (NaN without any). spikes_reset: whether they were
    mapped onto the LIF's reset. notes: how the files were read, one line each."""

    names: list[str]
    voltage_v: np.ndarray
    current_a: np.ndarray | None
    spike_counts: np.ndarray
    spike_peak_v: np.ndarray
    spikes_reset: bool
    notes: list[str] = field(default_factory=list)


def parse_window(text: str | None) -> tuple[float, float] | None:
    """'START:END' in s (each may end in 'ms' or 's') → (start_s, end_s), or InputError."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*([-+0-9.eE]+)\s*(ms|s)?\s*:\s*([-+0-9.eE]+)\s*(ms|s)?\s*", text)
    try:
        start, end = (float(m.group(k)) * (1e-3 if m.group(k + 1) == "ms" else 1.0) for k in (1, 3))
    except (AttributeError, ValueError):
        raise InputError(f"--window {text!r}: expected START:END in seconds, e.g. 0.1:0.35 (or 100ms:350ms)") from None
    if not end > start >= 0:
        raise InputError(f"--window {text!r}: expected 0 <= START < END")
    return start, end


def check_recording(rec: Recording) -> None:
    """One line (InputError) for a recording no model can take: empty, NaN or inf, constant, or
    voltages whose size shows a unit mistake."""
    v = rec.voltage_v
    if v.size < 2:
        raise InputError(f"{rec.name}: holds {v.size} voltage sample(s): expected a trace")
    bad = np.flatnonzero(~np.isfinite(v))
    if len(bad):
        at = f" ({bad[0] * rec.dt_s * 1e3:g} ms)" if rec.dt_s else ""
        raise InputError(f"{rec.name}: voltage sample {bad[0]}{at} is {v[bad[0]]}: expected finite numbers")
    if rec.current_a is not None and not np.isfinite(rec.current_a).all():
        k = int(np.flatnonzero(~np.isfinite(rec.current_a))[0])
        raise InputError(f"{rec.name}: current sample {k} is {rec.current_a[k]}: expected finite numbers")
    peak = float(np.max(np.abs(v)))
    if peak > 1.0:
        raise InputError(f"{rec.name}: the voltage reaches {peak:.3g} V: membrane voltages are tens of mV, so this file looks like "
                         "millivolts: pass --units mV")
    if peak < 1e-3:
        raise InputError(f"{rec.name}: the voltage stays within ±{peak * 1e3:.3g} mV: membrane voltages are tens of mV, so this "
                         "file looks like volts read as millivolts: pass --units V")
    if np.ptp(v) == 0:
        raise InputError(f"{rec.name}: the voltage is constant at {v[0] * 1e3:g} mV: expected a recorded trace, which varies")


def resample(x: np.ndarray, dt_in_s: float, dt_out_s: float, name: str) -> np.ndarray:
    """`x` (T,) from a step of `dt_in_s` onto one of `dt_out_s`: SciPy's polyphase resampling,
    whose FIR filter removes what the new step cannot hold (anti-aliasing)."""
    if abs(dt_in_s - dt_out_s) <= 1e-9 * dt_out_s:
        return x
    ratio = Fraction(dt_out_s / dt_in_s).limit_denominator(MAX_RESAMPLING_DENOMINATOR)  # down / up
    down, up = ratio.numerator, ratio.denominator
    if abs(dt_in_s * down / up - dt_out_s) > 1e-6 * dt_out_s or max(up, down) > MAX_RESAMPLING_DENOMINATOR:
        raise InputError(f"{name}: its step {dt_in_s:g} s is not a simple ratio of the model's {dt_out_s:g} s "
                         f"(needs up/down ≤ {MAX_RESAMPLING_DENOMINATOR}): resample it first")
    return signal.resample_poly(x, up, down, padtype="line")


def hold(x: np.ndarray, dt_in_s: float, dt_out_s: float) -> np.ndarray:
    """A current `x` (T,) onto a step of `dt_out_s`, each new sample holding the value in force at
    its time (a command waveform is piecewise constant; filtering would ring at its steps)."""
    n_out = int(np.floor((len(x) - 1) * dt_in_s / dt_out_s + 1e-9)) + 1
    idx = np.minimum(np.floor(np.arange(n_out) * dt_out_s / dt_in_s + 1e-9).astype(np.int64), len(x) - 1)
    return x[idx]


def _window_start(rec: Recording, grid: Grid, window, n_have: int, notes: list[str]) -> int:
    """The first sample (on the model's grid) of the model's window in `rec`."""
    have_s = (n_have - 1) * grid.dt_s
    if window is not None:
        start, end = window
        if abs((end - start) - grid.duration_s) > 0.5 * grid.dt_s:
            raise InputError(f"--window {start:g}:{end:g} is {(end - start) * 1e3:g} ms; the model takes windows of "
                             f"{grid.duration_s * 1e3:g} ms ({grid.n_samples} samples at {grid.dt_s * 1e3:g} ms): "
                             f"pass --window {start:g}:{start + grid.duration_s:g}")
    elif n_have == grid.n_samples:
        return 0
    elif grid.default_start_s is not None and n_have > grid.n_samples:
        start = grid.default_start_s
        notes.append(f"window {start:g}:{start + grid.duration_s:g} s, where the model's training waveform was cut (--window to change)")
    else:
        what = "longer" if n_have > grid.n_samples else "shorter"
        raise InputError(f"{rec.name}: holds {n_have} samples ({have_s * 1e3:g} ms) at {grid.dt_s * 1e3:g} ms, {what} than the model's "
                         f"window of {grid.n_samples} ({grid.duration_s * 1e3:g} ms): pass --window START:END"
                         + (", or --dt if it was sampled at another step" if rec.dt_s is None or n_have < grid.n_samples else ""))
    k = int(round((start - rec.start_s) / grid.dt_s))
    if k < 0 or k + grid.n_samples > n_have:
        raise InputError(f"{rec.name}: spans {rec.start_s:g} to {rec.start_s + have_s:g} s; the window "
                         f"{start:g}:{start + grid.duration_s:g} s does not fit inside it")
    return k


def onto_grid(rec: Recording, grid: Grid, *, window=None, reset_spikes: bool = False, notes: list[str] | None = None):
    """One recording on the model's grid: (voltage (T,) V, current (T,) A or None, spikes in the
    window, their highest peak V or NaN). Action potentials are detected at the recording's own
    step, and with `reset_spikes` mapped onto the LIF's reset (`spikes.to_reset`) before resampling."""
    notes = [] if notes is None else notes
    check_recording(rec)
    dt_in = rec.dt_s or grid.dt_s
    found = spike_tools.detect(rec.voltage_v, dt_in)
    v = spike_tools.to_reset(rec.voltage_v, dt_in, found) if reset_spikes and found.count else rec.voltage_v
    v = resample(v, dt_in, grid.dt_s, rec.name)
    cur = None if rec.current_a is None else hold(rec.current_a, dt_in, grid.dt_s)
    n_have = min(len(v), len(cur)) if cur is not None else len(v)
    k = _window_start(rec, grid, window, n_have, notes)
    t0, t1 = k * grid.dt_s, (k + grid.n_samples - 1) * grid.dt_s
    inside = (found.onsets * dt_in >= t0) & (found.onsets * dt_in <= t1)
    peak = float(found.peak_v[inside].max()) if inside.any() else float("nan")
    return (v[k:k + grid.n_samples], None if cur is None else cur[k:k + grid.n_samples], int(inside.sum()), peak)


def prepare(recordings: list[Recording], grid: Grid, *, window=None, reset_spikes: bool = False,
            notes: list[str] | None = None) -> Prepared:
    """Every recording onto the model's grid, as one batch (the currents where every recording holds one)."""
    notes = [] if notes is None else notes
    if not any(r.dt_s for r in recordings):
        notes.append(f"no time base in the file(s): sampled at the model's {grid.dt_s * 1e3:g} ms assumed (pass --dt otherwise)")
    rows = [onto_grid(r, grid, window=window, reset_spikes=reset_spikes, notes=notes) for r in recordings]
    v = np.stack([row[0] for row in rows])
    cur = np.stack([row[1] for row in rows]) if all(row[1] is not None for row in rows) else None
    return Prepared([r.name for r in recordings], v, cur, np.array([row[2] for row in rows]), np.array([row[3] for row in rows]),
                    reset_spikes, list(dict.fromkeys(notes)))
