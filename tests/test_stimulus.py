"""The stimulus: the batched FFT current equals the np.convolve('same') reference; steps, ramps, a user's waveform, mixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lif_sbi import stimulus
from lif_sbi.config import ConfigError, StimulusConfig
from lif_sbi.stimulus import (
    AMPLITUDE_HIGH_A,
    AMPLITUDE_LOW_A,
    DT_S,
    N_SAMPLES,
    TIME_S,
    current,
    current_reference,
    load_waveform,
    n_samples_of,
    noise_kernel,
    pulse,
    sample_current,
    sample_protocol,
    sample_stimulus,
    time_grid,
)


def max_rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    """max over rows of max|got - ref| / max|ref|."""
    return float(np.max(np.abs(got - ref).max(axis=1) / np.abs(ref).max(axis=1)))


def test_grid_and_kernel():
    assert N_SAMPLES == 501 and DT_S == 1e-4
    np.testing.assert_allclose(TIME_S[-1], 50e-3, rtol=1e-12)
    k = noise_kernel()
    assert k.shape == (501,) and k[0] == 1.0
    np.testing.assert_allclose(k[100], np.exp(-1.0), rtol=1e-14)  # j dt / tau = 100 * 0.1 ms / 10 ms


def test_reference_follows_the_design_text():
    """current_reference against DESIGN.md §2 written out with an explicit 'same' slice of the full convolution."""
    w = np.random.default_rng(3).standard_normal(501)
    a = 1.7e-9
    full = np.convolve(w, np.exp(-np.arange(501) * 1e-4 / 10e-3))  # 1001 samples
    c = full[250:751]  # np.convolve 'same': centred 501 samples
    c = c / (np.max(np.abs(c)) + 1e-9)
    t = np.arange(501) * 1e-4
    expected = a * (1 + 0.25 * np.sin(2 * np.pi * 10 * t) + 0.15 * c)
    np.testing.assert_allclose(current_reference(w, a), expected, rtol=1e-14, atol=0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_torch_current_matches_reference_float64(seed):
    rng = np.random.default_rng(seed)
    n = 64
    white = rng.standard_normal((n, N_SAMPLES))
    amp = rng.uniform(AMPLITUDE_LOW_A, AMPLITUDE_HIGH_A, n)
    got = current(torch.from_numpy(white), torch.from_numpy(amp))
    assert got.dtype == torch.float64 and got.shape == (n, N_SAMPLES)
    ref = np.stack([current_reference(w, a) for w, a in zip(white, amp)])
    assert max_rel_err(got.numpy(), ref) <= 1e-12


@pytest.mark.parametrize("amplitude", [AMPLITUDE_LOW_A, AMPLITUDE_HIGH_A])
def test_torch_current_at_amplitude_bounds(amplitude):
    white = np.random.default_rng(11).standard_normal((16, N_SAMPLES))
    amp = np.full(16, amplitude)
    got = current(white, amp).numpy()  # NumPy inputs accepted too
    ref = np.stack([current_reference(w, amplitude) for w in white])
    assert max_rel_err(got, ref) <= 1e-12
    # |c| <= 1 after normalisation, so I stays within a (1 +- 0.25 +- 0.15)
    assert got.min() >= amplitude * 0.6 * (1 - 1e-12) and got.max() <= amplitude * 1.4 * (1 + 1e-12)


@pytest.mark.parametrize("n_samples", [100, 257])  # even and odd lengths: the 'same' centring differs
def test_torch_current_other_lengths(n_samples):
    white = np.random.default_rng(n_samples).standard_normal((8, n_samples))
    amp = np.linspace(AMPLITUDE_LOW_A, AMPLITUDE_HIGH_A, 8)
    ref = np.stack([current_reference(w, a) for w, a in zip(white, amp)])
    assert max_rel_err(current(white, amp).numpy(), ref) <= 1e-12


def test_sample_current_is_reproducible_and_consistent():
    cur, amp, white = sample_current(200, torch.Generator().manual_seed(8))
    cur2, amp2, white2 = sample_current(200, torch.Generator().manual_seed(8))
    assert torch.equal(cur, cur2) and torch.equal(amp, amp2) and torch.equal(white, white2)
    assert not torch.equal(cur, sample_current(200, torch.Generator().manual_seed(9))[0])
    assert cur.shape == (200, N_SAMPLES) and amp.shape == (200,) and white.shape == (200, N_SAMPLES)
    assert bool(((amp >= AMPLITUDE_LOW_A) & (amp <= AMPLITUDE_HIGH_A)).all())
    ref = np.stack([current_reference(w, a) for w, a in zip(white.numpy(), amp.numpy())])
    assert max_rel_err(cur.numpy(), ref) <= 1e-12
    c32, _, _ = sample_current(200, torch.Generator().manual_seed(8), dtype=torch.float32)
    assert c32.dtype == torch.float32 and torch.equal(c32, cur.to(torch.float32))


def test_row_blocks_do_not_change_the_numbers(monkeypatch):
    """`current` works in blocks of CPU_ROWS rows on the CPU (speed); 300 rows (two whole blocks and
    a ragged one) give, bit for bit, what one block of all rows and one row at a time give."""
    white = torch.from_numpy(np.random.default_rng(21).standard_normal((300, N_SAMPLES)))
    amp = torch.from_numpy(np.random.default_rng(22).uniform(AMPLITUDE_LOW_A, AMPLITUDE_HIGH_A, 300))
    blocked = current(white, amp)
    monkeypatch.setattr(stimulus, "CPU_ROWS", 10**9)
    assert torch.equal(blocked, current(white, amp))
    monkeypatch.setattr(stimulus, "CPU_ROWS", 1)
    assert torch.equal(blocked, current(white, amp))


def test_bad_shapes():
    with pytest.raises(ValueError, match="white must have shape"):
        current(np.zeros(501), np.ones(1))
    with pytest.raises(ValueError, match=r"amplitude_a must have shape \(3,\)"):
        current(np.zeros((3, 501)), np.ones(2))


# ---------------------------------------------------------------------------------------------
# protocols: step, ramp, a user's waveform, mixtures (lif_sbi.config.StimulusConfig)

#: the recordings beside the checkout (../shared/recordings); absent on a clean clone
RECORDINGS = Path(__file__).resolve().parents[1].parent / "shared" / "recordings"
STEPS_ABF = RECORDINGS / "17o05028_ic_steps.abf"

# A window and step other than the reference's, with pulses that always end inside it.
PULSES = dict(duration_s=0.1, dt_s=5e-5, amplitude_low_a=0.5e-9, amplitude_high_a=2e-9,
              onset_low_s=0.01, onset_high_s=0.03, width_low_s=0.02, width_high_s=0.05)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def nonzero_span(c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of c (N, T): first and last nonzero index and the number of nonzero samples."""
    mask = c != 0
    first = mask.argmax(axis=1)
    last = c.shape[1] - 1 - mask[:, ::-1].argmax(axis=1)
    return first, last, mask.sum(axis=1)


def test_grid_helpers():
    """n_samples_of and time_grid: 501 samples for the reference's 50 ms at 0.1 ms, and other grids."""
    assert n_samples_of(0.05, DT_S) == N_SAMPLES == StimulusConfig().n_samples
    np.testing.assert_array_equal(time_grid(), TIME_S)
    assert n_samples_of(0.5, 1e-4) == 5001 and n_samples_of(0.05, 5e-5) == 1001 and n_samples_of(0.1, 2e-4) == 501
    t = time_grid(0.05, 5e-5)
    assert t.shape == (1001,) and t[0] == 0.0 and abs(t[-1] - 0.05) < 1e-15
    np.testing.assert_allclose(np.diff(t), 5e-5, rtol=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 8])
def test_default_spec_is_bit_identical_to_sample_current(seed):
    """StimulusConfig()'s coloured protocol draws exactly what sample_current draws with the reference defaults."""
    ref_current, ref_amp, _ = sample_current(300, gen(seed))
    for cur, amp in (sample_stimulus(300, gen(seed), StimulusConfig()), sample_protocol("coloured", 300, gen(seed), StimulusConfig())):
        assert cur.dtype == torch.float64 and cur.shape == (300, N_SAMPLES)
        assert torch.equal(cur, ref_current) and torch.equal(amp, ref_amp)


def test_coloured_on_another_grid_and_range():
    """The coloured protocol on 20 ms at 0.05 ms with a[1, 2] nA is sample_current with those settings."""
    spec = StimulusConfig(duration_s=0.02, dt_s=5e-5, amplitude_low_a=1e-9, amplitude_high_a=2e-9)
    cur, amp = sample_stimulus(200, gen(3), spec)
    assert cur.shape == (200, 401) == (200, spec.n_samples)
    ref, ref_amp, white = sample_current(200, gen(3), n_samples=401, dt_s=5e-5, amplitude_a=(1e-9, 2e-9))
    assert torch.equal(cur, ref) and torch.equal(amp, ref_amp)
    assert bool(((amp >= 1e-9) & (amp <= 2e-9)).all())
    expected = np.stack([current_reference(w, a, 5e-5) for w, a in zip(white.numpy(), amp.numpy())])
    assert max_rel_err(cur.numpy(), expected) <= 1e-12


def test_pulse_follows_its_definition():
    """pulse(): a on onset <= t_i < onset + width (ramp: a (t_i - onset) / width there), 0 elsewhere."""
    a, onset, width = np.array([1e-9, -0.5e-9]), np.array([0.01055, 0.0302]), np.array([0.0021, 0.00455])
    t = np.arange(501) * 1e-4
    for ramp in (False, True):
        got = pulse(a, onset, width, 501, 1e-4, ramp=ramp)
        assert got.dtype == torch.float64 and got.shape == (2, 501)
        for k in range(2):
            on = (t >= onset[k]) & (t < onset[k] + width[k])
            expected = np.where(on, a[k] * ((t - onset[k]) / width[k] if ramp else 1.0), 0.0)
            np.testing.assert_allclose(got[k].numpy(), expected, rtol=1e-12, atol=0)
    on0 = np.flatnonzero(pulse(a, onset, width, 501, 1e-4)[0].numpy())
    np.testing.assert_array_equal(on0, np.arange(106, 127))  # t = 10.6 ... 12.6 ms


def test_step_shape_and_recovered_parameters_lie_in_the_ranges():
    """Steps on 100 ms at 0.05 ms: one flat pulse per trace whose height, onset and width lie in the configured ranges."""
    spec = StimulusConfig(protocols=("step",), **PULSES)
    cur, amp = sample_stimulus(400, gen(11), spec)
    dt = spec.dt_s
    assert cur.shape == (400, n_samples_of(0.1, 5e-5)) == (400, 2001) and amp.shape == (400,)
    c, amp = cur.numpy(), amp.numpy()
    first, last, count = nonzero_span(c)
    assert np.all(count == last - first + 1)  # one contiguous pulse, exactly 0 outside it
    assert np.all(c == np.where(c != 0, amp[:, None], 0.0))  # flat at the drawn height
    assert np.all((amp >= spec.amplitude_low_a) & (amp <= spec.amplitude_high_a))
    # onset in ((first - 1) dt, first dt], onset + width in (last dt, (last + 1) dt]
    onset_hi, onset_lo = first * dt, (first - 1) * dt
    assert np.all(onset_hi >= spec.onset_low_s - 1e-12) and np.all(onset_lo < spec.onset_high_s)
    assert np.all((last - first) * dt < spec.width_high_s) and np.all((last - first + 2) * dt > spec.width_low_s)
    # the draws cover the ranges, not one corner of them
    for x, lo, hi in ((amp, spec.amplitude_low_a, spec.amplitude_high_a), (first * dt, spec.onset_low_s, spec.onset_high_s),
                      (count * dt, spec.width_low_s, spec.width_high_s)):
        assert x.min() < lo + 0.1 * (hi - lo) and x.max() > hi - 0.1 * (hi - lo)


def test_ramp_rises_linearly_from_its_onset():
    """Ramps: 0 outside the pulse, a constant positive slope inside it, onset and a / slope inside the ranges."""
    spec = StimulusConfig(protocols=("ramp",), **PULSES)
    cur, amp = sample_stimulus(400, gen(12), spec)
    dt, t = spec.dt_s, time_grid(spec.duration_s, spec.dt_s)
    assert cur.shape == (400, 2001)
    c, amp = cur.numpy(), amp.numpy()
    first, last, count = nonzero_span(c)
    assert np.all(count == last - first + 1) and np.all(count >= 2)
    assert np.all(c >= 0)
    for k in range(len(c)):
        d = np.diff(c[k, first[k] : last[k] + 1])
        np.testing.assert_allclose(d, d[0], rtol=1e-6)  # linear
    slope = (c[np.arange(400), last] - c[np.arange(400), first]) / ((last - first) * dt)  # A/s
    assert np.all(slope > 0)
    onset = t[first] - c[np.arange(400), first] / slope  # where the line meets 0
    width = amp / slope  # it reaches the drawn amplitude at onset + width
    assert np.all(onset >= spec.onset_low_s - 1e-9) and np.all(onset <= spec.onset_high_s + 1e-9)
    assert np.all(width >= spec.width_low_s * (1 - 1e-6)) and np.all(width <= spec.width_high_s * (1 + 1e-6))
    # the last sample of the ramp is within one step of its end, below the amplitude
    top = c[np.arange(400), last]
    assert np.all(top < amp) and np.all(top >= amp - slope * dt * (1 + 1e-6))
    assert np.all((amp >= spec.amplitude_low_a) & (amp <= spec.amplitude_high_a))


@pytest.mark.parametrize("protocol", ["step", "ramp"])
def test_fixed_pulse_when_low_equals_high(protocol):
    """low == high for amplitude, onset and width: every trace is the same pulse, 10 ms to 40 ms at 1 nA."""
    spec = StimulusConfig(protocols=(protocol,), amplitude_low_a=1e-9, amplitude_high_a=1e-9)  # onset 10 ms, width 30 ms by default
    cur, amp = sample_stimulus(50, gen(4), spec)
    assert cur.shape == (50, 501) and torch.equal(amp, torch.full((50,), 1e-9, dtype=torch.float64))
    assert bool((cur == cur[0]).all())
    t = TIME_S
    expected = np.where((t >= 0.01) & (t < 0.04), 1e-9 * ((t - 0.01) / 0.03 if protocol == "ramp" else 1.0), 0.0)
    np.testing.assert_allclose(cur[0].numpy(), expected, rtol=1e-12, atol=0)
    assert np.flatnonzero(cur[0].numpy()).max() == 399  # the pulse ends before t = 40 ms


def test_mixture_gives_each_protocols_waveforms():
    """protocols = coloured, step, ramp: each trace is one of the three, each protocol about a third of the batch."""
    spec = StimulusConfig(protocols=("coloured", "step", "ramp"), amplitude_low_a=0.5e-9, amplitude_high_a=2e-9,
                          onset_low_s=0.005, onset_high_s=0.015, width_low_s=0.01, width_high_s=0.03)
    n = 600
    cur, amp = sample_stimulus(n, gen(21), spec)
    assert cur.shape == (n, 501) and amp.shape == (n,)
    c, amp = cur.numpy(), amp.numpy()
    kinds = []
    for row, a in zip(c, amp):
        nz = row[row != 0]
        if nz.size == row.size:  # no zero anywhere: coloured, a (1 + 0.25 sin + 0.15 c) in a [0.6, 1.4]
            assert np.all(row >= 0.6 * a * (1 - 1e-12)) and np.all(row <= 1.4 * a * (1 + 1e-12))
            kinds.append("coloured")
        elif np.all(nz == a):
            kinds.append("step")
        else:
            d = np.diff(nz)
            np.testing.assert_allclose(d, d[0], rtol=1e-6)
            assert d[0] > 0 and nz.max() < a
            kinds.append("ramp")
    counts = {k: kinds.count(k) for k in spec.protocols}
    assert all(150 <= v <= 250 for v in counts.values()), counts  # 200 +- 4.3 sd
    assert np.all((amp >= 0.5e-9) & (amp <= 2e-9))


def _waveform_file(tmp_path, name="wave.npy", n=4000, dt=1e-4, seed=0):
    """A signed, piecewise-constant test waveform (n,) in A saved to tmp_path/name; returns (path, values)."""
    rng = np.random.default_rng(seed)
    values = np.repeat(rng.uniform(-0.2e-9, 0.4e-9, n // 40 + 1), 40)[:n]
    path = tmp_path / name
    if name.endswith(".npy"):
        np.save(path, values)
    else:
        np.savetxt(path, values, delimiter="," if name.endswith(".csv") else " ")
    return path, values


@pytest.mark.parametrize("protocols", [("step",), ("ramp",), ("coloured",), ("coloured", "step", "ramp"), ("file", "step")])
def test_same_seed_same_draws(protocols, tmp_path):
    """sample_stimulus with the same generator seed draws the same currents and amplitudes; another seed others."""
    path, _ = _waveform_file(tmp_path)
    spec = StimulusConfig(protocols=protocols, file=str(path), file_scale_low=0.5, file_scale_high=2.0, **PULSES)
    a, amp_a = sample_stimulus(64, gen(5), spec)
    b, amp_b = sample_stimulus(64, gen(5), spec)
    c, amp_c = sample_stimulus(64, gen(6), spec)
    assert torch.equal(a, b) and torch.equal(amp_a, amp_b)
    assert not torch.equal(a, c) and not torch.equal(amp_a, amp_c)


@pytest.mark.parametrize("name", ["wave.npy", "wave.csv", "wave.txt"])
def test_file_waveform_on_the_models_grid(name, tmp_path):
    """.npy, .csv and .txt waveforms at the model's dt (file_dt_s = 0): the window's samples, from file_start_s on."""
    path, values = _waveform_file(tmp_path, name)
    spec = StimulusConfig(protocols=("file",), file=str(path), duration_s=0.02, dt_s=1e-4)
    w = load_waveform(spec)
    assert w.shape == (201,) and w.dtype == np.float64
    np.testing.assert_array_equal(w, values[:201])
    later = load_waveform(StimulusConfig(protocols=("file",), file=str(path), duration_s=0.02, dt_s=1e-4, file_start_s=0.0037))
    np.testing.assert_array_equal(later, values[37:238])


@pytest.mark.parametrize(
    "file_dt_s, index",
    [
        (2.5e-5, lambda i: 4 * i),  # a 40 kHz file: every 4th sample
        (3e-4, lambda i: i // 3),  # coarser than the model: each value held for 3 steps
        (7.5e-5, lambda i: (4 * i) // 3),  # not a whole ratio: the file sample at or just before t_i
    ],
)
def test_file_waveform_is_resampled_by_zero_order_hold(file_dt_s, index, tmp_path):
    """A waveform at file_dt_s: model sample t_i takes the file's last value at or before t_i (no interpolation)."""
    values = np.arange(5000, dtype=np.float64) * 1e-13  # value = file index, so the pick is visible
    np.save(tmp_path / "w.npy", values)
    spec = StimulusConfig(protocols=("file",), file=str(tmp_path / "w.npy"), file_dt_s=file_dt_s, duration_s=0.05, dt_s=1e-4)
    w = load_waveform(spec)
    i = np.arange(501)
    np.testing.assert_array_equal(np.rint(w / 1e-13).astype(np.int64), index(i))
    np.testing.assert_array_equal(w, values[index(i)])


def test_file_scale_is_drawn_from_the_configured_range(tmp_path):
    """file protocol: each trace is the waveform times a factor ~ U(file_scale_low, high); amplitude = factor * max|waveform|."""
    path, values = _waveform_file(tmp_path, "w.csv")
    spec = StimulusConfig(protocols=("file",), file=str(path), file_scale_low=0.5, file_scale_high=3.0)
    cur, amp = sample_stimulus(300, gen(7), spec)
    wave = values[:501]
    assert cur.shape == (300, 501)
    scale = cur.numpy()[:, 0] / wave[0]
    np.testing.assert_allclose(cur.numpy(), scale[:, None] * wave[None, :], rtol=1e-12, atol=0)
    assert np.all((scale >= 0.5 * (1 - 1e-12)) & (scale <= 3.0 * (1 + 1e-12)))
    assert scale.min() < 0.75 and scale.max() > 2.75  # spread over the range
    np.testing.assert_allclose(amp.numpy(), scale * np.abs(wave).max(), rtol=1e-12)
    fixed, fixed_amp = sample_stimulus(5, gen(7), StimulusConfig(protocols=("file",), file=str(path), file_scale_low=2.0, file_scale_high=2.0))
    np.testing.assert_array_equal(fixed.numpy(), np.broadcast_to(2.0 * wave, (5, 501)))
    np.testing.assert_allclose(fixed_amp.numpy(), 2.0 * np.abs(wave).max(), rtol=1e-15)


def _write(tmp_path, case):
    """Bad waveform files, one per case; returns the StimulusConfig pointing at it."""
    good = np.full(1000, 0.1e-9)
    if case == "too short":
        np.save(tmp_path / "w.npy", good[:300])  # 30 ms of waveform for a 50 ms window
    elif case in ("nan", "inf"):
        bad = good.copy()
        bad[250] = np.nan if case == "nan" else np.inf
        np.save(tmp_path / "w.npy", bad)
    elif case == "two columns":
        np.save(tmp_path / "w.npy", np.stack([np.arange(1000) * 1e-4, good], axis=1))  # (time, current): (1000, 2)
    elif case == "missing at load":
        np.save(tmp_path / "w.npy", good)
    elif case == "header line":
        (tmp_path / "w.csv").write_text("current_A\n" + "\n".join(["1e-10"] * 1000) + "\n")
        return StimulusConfig(protocols=("file",), file=str(tmp_path / "w.csv"))
    spec = StimulusConfig(protocols=("file",), file=str(tmp_path / "w.npy"))
    if case == "missing at load":
        (tmp_path / "w.npy").unlink()  # validated, then gone before the simulation reads it
    return spec


@pytest.mark.parametrize(
    "case, match",
    [
        ("too short", r"holds 0\.03 s of waveform; the window needs 0\.0501 s"),
        ("nan", "holds NaN or inf inside the window"),
        ("inf", "holds NaN or inf inside the window"),
        ("two columns", r"expected one column of current values in A, got an array of shape \(1000, 2\)"),
        ("missing at load", "could not be read as a waveform"),
        ("header line", "could not be read as a waveform: could not convert"),
    ],
)
def test_bad_waveform_files_raise_a_value_error_naming_the_file(case, match, tmp_path):
    """Bad waveform files (too short, NaN/inf in the window, two columns, vanished, a header) raise ValueError naming the file."""
    spec = _write(tmp_path, case)
    with pytest.raises(ValueError, match=match) as info:
        load_waveform(spec)
    assert spec.file in str(info.value)
    assert "stimulus.file" in str(info.value)


def test_missing_or_mistyped_waveform_file_is_a_config_error(tmp_path):
    """StimulusConfig refuses protocols = ['file'] without an existing file, and files of another type, naming stimulus.file."""
    with pytest.raises(ConfigError, match=r"stimulus.file = '.*nope\.npy' is not allowed: expected an existing"):
        StimulusConfig(protocols=("file",), file=str(tmp_path / "nope.npy"))
    with pytest.raises(ConfigError, match="stimulus.file = '' is not allowed"):
        StimulusConfig(protocols=("file",))
    (tmp_path / "w.wav").write_bytes(b"RIFF")
    with pytest.raises(ConfigError, match=r"stimulus.file = '.*w\.wav' is not allowed: expected an .abf, .npy, .csv or .txt"):
        StimulusConfig(protocols=("file",), file=str(tmp_path / "w.wav"))


def test_unknown_protocol_name():
    """sample_protocol names the allowed protocols when given another."""
    with pytest.raises(ValueError, match="stimulus protocol must be one of coloured, step, ramp, file; got 'sine'"):
        sample_protocol("sine", 4, gen(0), StimulusConfig())


@pytest.mark.skipif(not STEPS_ABF.is_file(), reason=f"the shared recording {STEPS_ABF} is absent (a clean clone)")
@pytest.mark.parametrize("sweep, step_pa", [(10, 50.0), (15, 100.0), (5, 0.0)])
def test_abf_command_channel_as_the_file_protocol(sweep, step_pa):
    """The ABF recording's command channel (20 kHz) on a 0.1 ms grid from 100 ms: 0 pA, then the sweep's step from 146.85 ms."""
    pyabf = pytest.importorskip("pyabf")
    spec = StimulusConfig(protocols=("file",), file=str(STEPS_ABF), file_sweep=sweep, duration_s=0.1, dt_s=1e-4, file_start_s=0.1)
    w = load_waveform(spec)
    assert w.shape == (1001,)
    abf = pyabf.ABF(str(STEPS_ABF))
    abf.setSweep(sweep)
    command = np.asarray(abf.sweepC, dtype=np.float64) * 1e-12  # pA -> A
    np.testing.assert_array_equal(w, command[2000 + 2 * np.arange(1001)])  # t_i = 0.1 s + i 0.1 ms = sample 2000 + 2i
    # the README's protocol: the step of -50 + 10 k pA starts at 0.14685 s (sample 469 of the window)
    assert np.all(w[:469] == 0.0)
    np.testing.assert_allclose(w[469:], step_pa * 1e-12, rtol=1e-12, atol=0)
    cur, amp = sample_stimulus(3, gen(0), spec)  # scale fixed at 1: the command itself
    np.testing.assert_array_equal(cur.numpy(), np.broadcast_to(w, (3, 1001)))
    np.testing.assert_allclose(amp.numpy(), abs(step_pa) * 1e-12, rtol=1e-12)
