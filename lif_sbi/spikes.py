"""Action potentials in recorded traces: found by a dV/dt criterion (as eFEL does) and mapped onto the LIF's reset."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PEAK_THRESHOLD_V = -0.020  # an AP's peak crosses this upwards (eFEL's "Threshold", -20 mV)
DERIVATIVE_THRESHOLD_V_PER_S = 10.0  # AP onset: dV/dt rises above this (eFEL's DerivativeThreshold, 10 mV/ms)
# eFEL's "DerivativeWindow" (default 3): an onset must be followed by this many samples whose dV/dt
# is not below the threshold, so that a one-sample noise blip in the foot of the AP is not the onset.
DERIVATIVE_WINDOW_SAMPLES = 3
# The after-hyperpolarisation trough is looked for at most this long after the trace falls back
# below the peak threshold. The fast AHP of cortical and hippocampal cells bottoms out within a few
# ms; 20 ms also takes in a medium AHP, yet in a slowly firing cell (inter-spike intervals of
# 100 ms or more) it keeps the trough from sliding to the slow ramp-down just before the next AP,
# which would make `to_reset` hold the trace flat for most of the interval. It bounds the
# "refractory" time of the mapped trace at the AP's width plus 20 ms (the LIF prior: 1-5 ms).
TROUGH_WINDOW_S = 0.020


@dataclass(frozen=True)
class Spikes:
    """The APs of one trace, in time order; all four arrays have shape (n,) for n APs.

    onsets: int sample indices where each AP begins (the dV/dt criterion, eFEL's AP_begin_indices);
    peaks: int sample index of each AP's peak (eFEL's peak_indices);
    ends: int sample index of the after-hyperpolarisation trough that ends each AP;
    peak_v: float, V at each peak.
    onsets <= peaks < ends, and ends[i] <= onsets[i + 1]."""

    onsets: np.ndarray
    peaks: np.ndarray
    ends: np.ndarray
    peak_v: np.ndarray

    @property
    def count(self) -> int:
        """Number of APs, n."""
        return int(self.peaks.shape[0])


def _validate(v_v, dt_s: float) -> np.ndarray:
    """v_v as a (T,) float64 array in V (not copied where it already is one), or ValueError with one line."""
    v = np.asarray(v_v, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"v_v must be a 1-D voltage trace (T,) in V, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"v_v must be finite; it has {int(np.sum(~np.isfinite(v)))} NaN/inf samples")
    number = isinstance(dt_s, (int, float, np.floating, np.integer)) and not isinstance(dt_s, bool)
    if not (number and math.isfinite(dt_s) and dt_s > 0):
        raise ValueError(f"dt_s must be a finite number of seconds > 0, got {dt_s!r}")
    return v


def _crossings(v_v: np.ndarray, peak_threshold_v: float) -> tuple[np.ndarray, np.ndarray]:
    """(n,) int sample indices of the upward crossings (first sample above the threshold) and of the
    matching downward crossings (first sample back at or below it). As eFEL's peak_indices: an
    excursion that is already above at the first sample, or still above at the last, is no AP."""
    above = v_v > peak_threshold_v
    step = np.diff(above.astype(np.int8))
    ups = np.flatnonzero(step == 1) + 1
    downs = np.flatnonzero(step == -1) + 1
    downs = downs[downs > ups[0]] if ups.size else downs[:0]
    ups = ups[: downs.size]
    return ups, downs


def _onset(dvdt: np.ndarray, peak: int, lower: int, threshold: float) -> int:
    """Sample index where the AP peaking at `peak` begins, searching back no further than `lower`.

    A port of eFEL's AP_begin_indices (efel/cppcore/SpikeShape.cpp): going back from the peak, find
    the last sample j with dV/dt <= threshold; the onset is j + 1, the first sample of the rise,
    provided the DERIVATIVE_WINDOW_SAMPLES samples from j + 1 on all have dV/dt >= threshold;
    otherwise keep searching back from j - 1. (So the onset is one sample after "the last sample
    below the threshold".) Where no such j exists after `lower`, eFEL drops the AP; here its onset
    is `lower` (in practice only an AP whose upstroke is cut by the trace start)."""
    n = dvdt.shape[0]
    start = peak  # the search looks at samples start - 1, start - 2, ..., lower
    while True:
        below = np.flatnonzero(dvdt[lower:start] <= threshold)
        if below.size == 0:
            return lower
        begin = min(lower + int(below[-1]) + 1, n - DERIVATIVE_WINDOW_SAMPLES)
        window = dvdt[begin : begin + DERIVATIVE_WINDOW_SAMPLES]
        if not np.any(window < threshold):
            return begin
        start = begin - 1


def detect(
    v_v: np.ndarray,
    dt_s: float,
    *,
    peak_threshold_v: float = PEAK_THRESHOLD_V,
    derivative_threshold_v_per_s: float = DERIVATIVE_THRESHOLD_V_PER_S,
) -> Spikes:
    """The APs of v_v (T,), voltage in V sampled every dt_s seconds.

    Peak: each upward crossing of peak_threshold_v starts an AP; its peak is the maximum until the
    trace falls back below the threshold. End: the minimum of V from the downward crossing until
    the next AP's upward crossing, the trace end, or TROUGH_WINDOW_S after the downward crossing,
    whichever is first (the after-hyperpolarisation trough; the first sample of a tie). eFEL's
    min_AHP_indices differs: it takes the first local minimum between two peaks, which on a noisy
    or quantised AHP can be a shallower dip before the trough. Onset: `_onset`, searching back no further than the previous AP's end (or
    sample 0). The minimum up to the next upward crossing is also the minimum up to the next onset,
    since that onset is searched only after this end. A trace that never crosses the threshold
    (an LIF simulation, which stays below about -50 mV) gives empty int arrays."""
    v = _validate(v_v, dt_s)
    ups, downs = _crossings(v, peak_threshold_v)
    n = ups.size
    # eFEL's central difference, which np.gradient (edge_order=1) computes exactly: (v[i+1] - v[i-1])
    # / 2dt inside, one-sided at the two ends. Its value at i is centred on sample i, so the onset
    # does not lag the forward difference's half-sample and matches eFEL's indices (to one sample,
    # where eFEL's resampling breaks an exact tie differently: tests/test_spikes.py).
    dvdt_v_per_s = np.gradient(v, dt_s) if v.size > 1 else np.zeros_like(v)
    window = max(1, round(TROUGH_WINDOW_S / dt_s))
    onsets = np.empty(n, dtype=np.int64)
    peaks = np.empty(n, dtype=np.int64)
    ends = np.empty(n, dtype=np.int64)
    lower = 0
    for i in range(n):
        peaks[i] = ups[i] + int(np.argmax(v[ups[i] : downs[i]]))
        onsets[i] = _onset(dvdt_v_per_s, int(peaks[i]), lower, derivative_threshold_v_per_s)
        stop = min(int(ups[i + 1]) if i + 1 < n else v.size, int(downs[i]) + window)
        ends[i] = downs[i] + int(np.argmin(v[downs[i] : stop]))
        lower = int(ends[i])
    return Spikes(onsets=onsets, peaks=peaks, ends=ends, peak_v=v[peaks].astype(np.float64))


def to_reset(
    v_v: np.ndarray, dt_s: float, spikes: Spikes | None = None, *, peak_threshold_v: float = PEAK_THRESHOLD_V
) -> np.ndarray:
    """A copy of v_v (T,) in V in which every AP, from its onset to its trough (`ends`), is replaced
    by the trough's voltage; `spikes` defaults to `detect(v_v, dt_s, peak_threshold_v=...)`. v_v is
    not modified.

    An approximation, for feeding recordings to an LIF estimator: an LIF has no spike waveform; at
    threshold it jumps to V_res and is held there for t_ref. So each AP's samples from onset to
    trough are set to the trough voltage: the trace jumps from roughly threshold (the voltage just
    before the onset) to roughly reset and stays there for about the AP's width, then follows the
    recording. The mapped trace's "reset" is thus the cell's AHP trough and its "refractory" time
    the AP's duration (onset to trough), neither of which is what a real cell's reset or
    refractoriness is: the LIF's reset is instantaneous and its V_res is not an AHP minimum.
    Where dV/dt stays under its threshold until V is already above peak_threshold_v (slow, small
    APs of a depolarised cell), the replaced span starts at the upward crossing instead of the
    onset, so that no sample of a counted AP above peak_threshold_v is left. Samples outside every
    replaced span are unchanged; an excursion above peak_threshold_v that `detect` does not count
    (cut by the trace's start or end) is left as recorded."""
    v = _validate(v_v, dt_s)
    spikes = detect(v, dt_s, peak_threshold_v=peak_threshold_v) if spikes is None else spikes
    out = v.copy()
    lower = 0
    for onset, peak, end in zip(spikes.onsets.tolist(), spikes.peaks.tolist(), spikes.ends.tolist()):
        below = np.flatnonzero(v[lower : peak + 1] <= peak_threshold_v)
        rise = lower + int(below[-1]) + 1 if below.size else lower  # first sample of the excursion
        out[min(onset, rise) : end + 1] = v[end]
        lower = end
    return out
