"""lif_sbi.spikes: AP detection against eFEL's own indices on real recordings, synthetic APs, and the mapping onto the LIF's reset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import brentq

from lif_sbi import spikes as S

RECORDINGS = Path(__file__).resolve().parents[2] / "shared" / "recordings"
CSV = "AP_begin_95810005.abf.csv"
ABF = "17o05028_ic_steps.abf"

# Reference indices computed with eFEL 5.7.34 (pip `efel`), default settings, T = arange * 0.1 ms,
# stim_start 31.2 ms, stim_end 431.2 ms as in eFEL's tests/test_basic.py (the whole trace gives the
# same). eFEL's own tests check only that these arrays have equal lengths.
EFEL_CSV_AP_BEGIN = [543, 710, 963, 1399, 3537]
EFEL_CSV_PEAKS = [547, 714, 969, 1404, 3543]
# Ours are 543, 710, 963, 1399, 3538 and 547, 714, 968, 1404, 3543: eFEL first resamples the trace
# onto its own 0.1 ms grid (interp_step), which perturbs values at the last bit and so breaks two
# exact ties differently: samples 968 and 969 are both 34.844551 mV, and dV/dt at 3537 is exactly
# 10 mV/ms (the threshold). Hence a tolerance of 1 sample.
CSV_TOLERANCE_SAMPLES = 1

# eFEL 5.7.34 on each sweep of the ABF (stim_start 0, stim_end the last sample; mV, ms). eFEL
# resamples the 20 kHz trace to 0.1 ms, so its indices count 0.1 ms steps, ours 0.05 ms samples.
EFEL_ABF_COUNTS = [10, 11, 12, 12, 12, 16, 18, 20, 22, 25, 29, 32, 35, 39, 40, 42]
EFEL_ABF_PEAKS_01MS = {
    0: [8142, 9377, 10419, 23038, 23891, 24857, 26032, 27174, 28385, 29369],
    15: [1610, 1795, 1982, 2173, 2366, 2566, 2776, 2997, 3228, 3447, 3660, 3888, 4128, 4367, 4609, 4858,
         5115, 5377, 5663, 5946, 6235, 16814, 17024, 17219, 17416, 17605, 17805, 18011, 18233, 18447,
         18668, 18898, 19137, 19368, 19608, 19854, 20082, 20341, 20601, 20912, 21197, 21459],
}
EFEL_ABF_AP_BEGIN_01MS = {
    0: [8133, 9367, 10408, 23029, 23882, 24846, 26021, 27163, 28373, 29357],
    15: [1601, 1782, 1967, 2156, 2347, 2545, 2754, 2976, 3207, 3426, 3639, 3866, 4105, 4343, 4584, 4835,
         5092, 5353, 5640, 5923, 6212, 16804, 17013, 17206, 17402, 17589, 17788, 17993, 18215, 18428,
         18648, 18877, 19116, 19347, 19588, 19831, 20059, 20319, 20579, 20889, 21173, 21438],
}
ABF_TOLERANCE_S = 1.0e-4  # one step of eFEL's 0.1 ms grid (two of our samples)


def _recording(name: str) -> Path:
    path = RECORDINGS / name
    if not path.is_file():
        pytest.skip(f"real recording {path} not present")
    return path


@pytest.fixture(scope="module")
def csv_trace() -> tuple[np.ndarray, float]:
    """(T,) V and dt_s of eFEL's AP_begin test trace (mV on disk, 0.1 ms per sample)."""
    return np.loadtxt(_recording(CSV)) * 1e-3, 1e-4


@pytest.fixture(scope="module")
def abf_sweeps() -> tuple[list[np.ndarray], float]:
    """Every sweep of the current-clamp ABF as (T,) V, and dt_s."""
    pyabf = pytest.importorskip("pyabf")
    abf = pyabf.ABF(str(_recording(ABF)))
    sweeps = []
    for i in range(abf.sweepCount):
        abf.setSweep(i)
        sweeps.append(np.asarray(abf.sweepY, dtype=np.float64) * 1e-3)
    return sweeps, 1.0 / abf.sampleRate


def _check_order(sp: S.Spikes, n_samples: int) -> None:
    for a in (sp.onsets, sp.peaks, sp.ends):
        assert a.dtype.kind == "i" and a.shape == (sp.count,)
    assert sp.peak_v.shape == (sp.count,)
    assert np.all(sp.onsets <= sp.peaks) and np.all(sp.peaks < sp.ends) and np.all(sp.ends < n_samples)
    assert np.all(sp.ends[:-1] <= sp.onsets[1:])


def _check_reset(v: np.ndarray, dt_s: float) -> None:
    """to_reset leaves no sample above the peak threshold, changes nothing outside the APs' spans
    and leaves its input alone."""
    before = v.copy()
    sp = S.detect(v, dt_s)
    out = S.to_reset(v, dt_s)
    np.testing.assert_array_equal(v, before)
    assert out.shape == v.shape and out is not v
    assert out.max() <= S.PEAK_THRESHOLD_V
    changed = np.flatnonzero(out != v)
    inside = np.zeros(v.size, dtype=bool)
    for i in range(sp.count):
        lower = sp.ends[i - 1] if i else 0
        rise = lower + np.flatnonzero(v[lower : sp.peaks[i]] <= S.PEAK_THRESHOLD_V)[-1] + 1
        inside[min(sp.onsets[i], rise) : sp.ends[i] + 1] = True
        np.testing.assert_array_equal(out[sp.onsets[i] : sp.ends[i] + 1], v[sp.ends[i]])
    assert np.all(inside[changed])
    np.testing.assert_array_equal(out[~inside], v[~inside])


# ------------------------------------------------------------------------------------------------
# real recordings


def test_csv_matches_efel(csv_trace):
    v, dt_s = csv_trace
    sp = S.detect(v, dt_s)
    assert sp.count == len(EFEL_CSV_PEAKS) == 5
    _check_order(sp, v.size)
    assert np.abs(sp.peaks - EFEL_CSV_PEAKS).max() <= CSV_TOLERANCE_SAMPLES
    assert np.abs(sp.onsets - EFEL_CSV_AP_BEGIN).max() <= CSV_TOLERANCE_SAMPLES
    np.testing.assert_allclose(sp.peak_v, v[sp.peaks])
    assert np.all(v[sp.ends] < v[sp.onsets])  # the trough lies below where the AP began


def test_csv_to_reset(csv_trace):
    _check_reset(*csv_trace)


def test_abf_counts_match_efel_and_readme(abf_sweeps):
    sweeps, dt_s = abf_sweeps
    counts = [S.detect(v, dt_s).count for v in sweeps]
    assert counts == EFEL_ABF_COUNTS
    # README: 10-16 APs per sweep where the step is hyperpolarising or zero (sweeps 0-5: -50 to
    # 0 pA), 42 at +100 pA (sweep 15); in between the count rises with the step.
    assert all(10 <= c <= 16 for c in counts[:6])
    assert counts[15] == 42
    assert counts == sorted(counts)


@pytest.mark.parametrize("sweep", [0, 15])
def test_abf_indices_match_efel(abf_sweeps, sweep):
    sweeps, dt_s = abf_sweeps
    sp = S.detect(sweeps[sweep], dt_s)
    _check_order(sp, sweeps[sweep].size)
    np.testing.assert_allclose(sp.peaks * dt_s, np.array(EFEL_ABF_PEAKS_01MS[sweep]) * 1e-4, atol=ABF_TOLERANCE_S)
    np.testing.assert_allclose(sp.onsets * dt_s, np.array(EFEL_ABF_AP_BEGIN_01MS[sweep]) * 1e-4, atol=ABF_TOLERANCE_S)


def test_abf_to_reset(abf_sweeps):
    sweeps, dt_s = abf_sweeps
    for i in (0, 5, 10, 15):  # 15: most onsets lie above -20 mV, so spans start at the crossing
        _check_reset(sweeps[i], dt_s)


# ------------------------------------------------------------------------------------------------
# synthetic traces

DT_S = 1e-4
REST_V, AMP_V, SIGMA_S = -0.070, 0.100, 5e-4  # Gaussian APs: +30 mV peaks, max dV/dt 121 V/s
AHP_V, AHP_TAU_S = 0.008, 4e-3  # AHP: -8 mV alpha function, deepest 4 ms after the peak
PEAK_SAMPLES = np.array([500, 1500, 1580, 3000])  # the pair 8 ms apart: the next AP cuts the window


def _synthetic(noise_v: float = 0.0, seed: int = 0) -> np.ndarray:
    t = np.arange(4000) * DT_S
    v = np.full(t.shape, REST_V)
    for p in PEAK_SAMPLES:
        u = t - p * DT_S
        v += AMP_V * np.exp(-0.5 * (u / SIGMA_S) ** 2)
        after = np.clip(u, 0.0, None) / AHP_TAU_S
        v -= AHP_V * after * np.exp(1.0 - after)
    return v + noise_v * np.random.default_rng(seed).standard_normal(v.size)


def _gaussian_onset_s() -> float:
    """Time before the peak at which a lone Gaussian AP's dV/dt reaches the derivative threshold."""

    def excess_rate(x_s: float) -> float:  # dV/dt (V/s) x_s before the peak, less the threshold
        return AMP_V * x_s / SIGMA_S**2 * np.exp(-0.5 * (x_s / SIGMA_S) ** 2) - S.DERIVATIVE_THRESHOLD_V_PER_S

    return brentq(excess_rate, SIGMA_S, 10 * SIGMA_S)


@pytest.mark.parametrize("noise_v", [0.0, 5e-5])
def test_synthetic_known_times(noise_v):
    v = _synthetic(noise_v, seed=1)
    sp = S.detect(v, DT_S)
    assert sp.count == PEAK_SAMPLES.size
    _check_order(sp, v.size)
    np.testing.assert_array_equal(sp.peaks, PEAK_SAMPLES)
    expected_onsets = PEAK_SAMPLES - _gaussian_onset_s() / DT_S
    assert np.abs(sp.onsets - expected_onsets).max() <= 2
    # troughs: at the AHP minimum (peak + 4 ms) for the lone APs; the first of the close pair has
    # its AHP cut by the next AP's rise, so its trough lies before that AP's onset; the second's
    # AHP adds to the tail of the first's, so its trough is deeper (and a little earlier)
    lone = np.array([0, 3])
    tol = 2 if noise_v == 0 else 10  # the alpha function's minimum is flat: noise moves it a little
    assert np.abs(sp.ends[lone] - (PEAK_SAMPLES[lone] + AHP_TAU_S / DT_S)).max() <= tol
    assert PEAK_SAMPLES[1] < sp.ends[1] <= sp.onsets[2] < PEAK_SAMPLES[2]
    assert v[sp.ends[2]] < v[sp.ends[lone]].min() - 2e-3 and PEAK_SAMPLES[2] < sp.ends[2] < sp.onsets[3]
    _check_reset(v, DT_S)


def test_thresholds_are_parameters():
    v = _synthetic()
    assert S.detect(v, DT_S, peak_threshold_v=0.040).count == 0  # peaks are +30 mV
    late = S.detect(v, DT_S, derivative_threshold_v_per_s=50.0)
    early = S.detect(v, DT_S)
    assert np.all(late.onsets > early.onsets) and np.array_equal(late.peaks, early.peaks)


def test_lif_sawtooth_has_no_spikes():
    # an LIF trace: charges from -75 mV towards -50 mV, then resets; never above -50 mV
    rng = np.random.default_rng(0)
    t = np.arange(20000) * DT_S
    phase = (t % 0.025) / 0.025
    v = -0.075 + 0.025 * (1 - np.exp(-3 * phase)) / (1 - np.exp(-3)) + 2e-4 * rng.standard_normal(t.size)
    v = np.minimum(v, -0.050)
    sp = S.detect(v, DT_S)
    assert sp.count == 0
    for a in (sp.onsets, sp.peaks, sp.ends):
        assert a.dtype.kind == "i" and a.shape == (0,)
    assert sp.peak_v.shape == (0,)
    out = S.to_reset(v, DT_S)
    np.testing.assert_array_equal(out, v)
    assert out is not v


def test_excursions_cut_by_the_trace_edges_are_not_aps():
    v = _synthetic()
    assert S.detect(v[505:], DT_S).count == PEAK_SAMPLES.size - 1  # starts just after a peak
    assert S.detect(v[:2995], DT_S).count == PEAK_SAMPLES.size - 1  # ends before the last falls
    assert S.detect(np.full(100, 0.0), DT_S).count == 0


def test_explicit_spikes_are_used():
    v = _synthetic()
    sp = S.detect(v, DT_S)
    first = S.Spikes(sp.onsets[:1], sp.peaks[:1], sp.ends[:1], sp.peak_v[:1])
    out = S.to_reset(v, DT_S, first)
    assert out[: sp.ends[0] + 1].max() <= S.PEAK_THRESHOLD_V
    np.testing.assert_array_equal(out[sp.ends[0] + 1 :], v[sp.ends[0] + 1 :])


@pytest.mark.parametrize(
    "v, dt_s",
    [
        (np.zeros((2, 10)), 1e-4),
        (np.array([0.0, np.nan, 0.0]), 1e-4),
        (np.array([0.0, np.inf, 0.0]), 1e-4),
        (np.zeros(10), 0.0),
        (np.zeros(10), -1e-4),
        (np.zeros(10), float("nan")),
    ],
)
def test_bad_inputs_raise(v, dt_s):
    with pytest.raises(ValueError) as err:
        S.detect(v, dt_s)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError):
        S.to_reset(v, dt_s)
