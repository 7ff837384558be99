"""lif_sbi.recordings: every file layout a scientist brings, onto the model's grid, and one line for each bad one."""

from pathlib import Path

import numpy as np
import pytest

from lif_sbi import recordings
from lif_sbi.errors import InputError
from lif_sbi.recordings import Recording, grid

RECORDINGS = Path(__file__).resolve().parents[2] / "shared" / "recordings"
ABF = RECORDINGS / "17o05028_ic_steps.abf"
GRID = grid.Grid(dt_s=1e-4, n_samples=501)


def _trace(n=501, seed=0):
    """A membrane-like trace in V: -70 mV, a slow wave, 0.5 mV noise."""
    rng = np.random.default_rng(seed)
    return -0.07 + 0.005 * np.sin(np.arange(n) / 40) + rng.normal(0, 5e-4, n)


def _one_line(exc: InputError) -> str:
    text = str(exc)
    assert "\n" not in text and text, text
    return text


# ---- layouts that are read ----------------------------------------------------------------

def test_single_column_csv_in_mv(tmp_path):
    v = _trace()
    np.savetxt(tmp_path / "v.csv", v * 1e3)
    (rec,) = recordings.read(tmp_path / "v.csv", units="mV")
    np.testing.assert_allclose(rec.voltage_v, v, atol=1e-9)
    assert rec.dt_s is None and rec.current_a is None


def test_time_voltage_current_columns_with_header(tmp_path):
    v, t = _trace(), np.arange(501) * 0.1  # ms
    i = np.where(t > 10, 100.0, 0.0)  # pA
    np.savetxt(tmp_path / "tvi.csv", np.c_[t, v * 1e3, i], delimiter=",", header="time (ms),V (mV),I (pA)", comments="")
    notes = []
    (rec,) = recordings.read(tmp_path / "tvi.csv", units="mV", current_units="pA", notes=notes)
    assert rec.dt_s == pytest.approx(1e-4) and "ms" in notes[0]
    np.testing.assert_allclose(rec.current_a, i * 1e-12)
    np.testing.assert_allclose(rec.voltage_v, v, atol=1e-9)


def test_time_in_seconds_is_recognised_and_columns_can_be_named(tmp_path):
    v, t = _trace(), np.arange(501) * 1e-4
    np.savetxt(tmp_path / "a.txt", np.c_[t, v])
    (rec,) = recordings.read(tmp_path / "a.txt")
    assert rec.dt_s == pytest.approx(1e-4)
    np.savetxt(tmp_path / "b.txt", np.c_[v, v * 0 + 1e-10])  # voltage and current, no time: says so with --columns
    (rec,) = recordings.read(tmp_path / "b.txt", columns="v,i", current_units="A")
    assert rec.current_a[0] == pytest.approx(1e-10)


def test_one_trace_per_row_and_npy_layouts(tmp_path):
    x = np.stack([_trace(seed=s) for s in range(3)])
    np.savetxt(tmp_path / "rows.csv", x, delimiter=",")
    assert len(recordings.read(tmp_path / "rows.csv")) == 3
    for shape in [(501,), (3, 501), (3, 501, 1)]:
        np.save(tmp_path / "x.npy", x[: 1 if len(shape) == 1 else 3].reshape(shape))
        recs = recordings.read(tmp_path / "x.npy")
        assert all(len(r.voltage_v) == 501 for r in recs)


def test_npz_with_current_and_time_base(tmp_path):
    v = np.stack([_trace(seed=s) for s in range(2)])
    np.savez(tmp_path / "r.npz", voltage=v * 1e3, current=np.ones_like(v) * 50, dt_s=5e-5)
    recs = recordings.read(tmp_path / "r.npz", units="mV", current_units="pA")
    assert [r.dt_s for r in recs] == [5e-5, 5e-5] and recs[1].current_a[0] == pytest.approx(50e-12)


@pytest.mark.skipif(not ABF.is_file(), reason="shared recordings not present")
def test_abf_sweeps_with_command_current():
    import pyabf

    recs = recordings.read(ABF, sweeps=[0, 15])
    abf = pyabf.ABF(str(ABF))
    abf.setSweep(15)
    assert [r.name for r in recs] == ["17o05028_ic_steps.abf sweep 0", "17o05028_ic_steps.abf sweep 15"]
    np.testing.assert_allclose(recs[1].voltage_v, abf.sweepY * 1e-3)
    np.testing.assert_allclose(recs[1].current_a, abf.sweepC * 1e-12)
    assert recs[1].dt_s == pytest.approx(5e-5)
    assert recs[1].current_a.max() == pytest.approx(100e-12)  # sweep 15's step: +100 pA
    assert len(recordings.read(ABF)) == 16


# ---- onto the grid ----------------------------------------------------------------------

def test_resampling_is_anti_aliased_and_lands_on_the_grid():
    """20 kHz onto the model's 10 kHz: a slow wave survives, a 7 kHz tone (above the new Nyquist) is filtered out."""
    t = np.arange(2001) * 5e-5
    slow = -0.07 + 0.005 * np.sin(2 * np.pi * 20 * t)
    tone = 0.002 * np.sin(2 * np.pi * 7000 * t)
    rec = Recording("x", slow + tone, 5e-5)
    v, cur, n_spikes, _ = grid.onto_grid(rec, grid.Grid(1e-4, 501), window=(0.0, 0.05))
    assert len(v) == 501 and cur is None and n_spikes == 0
    inner = slice(20, -20)  # away from the filter's edges
    np.testing.assert_allclose(v[inner], slow[::2][:501][inner], atol=2e-4)


def test_current_is_held_not_filtered():
    i = np.r_[np.zeros(1000), np.full(1001, 1e-10)]
    held = grid.hold(i, 5e-5, 1e-4)
    assert set(np.unique(held)) == {0.0, 1e-10} and len(held) == 1001


def test_window_and_default_window():
    v = _trace(3001)
    rec = Recording("r", v, 1e-4)
    out, *_ = grid.onto_grid(rec, GRID, window=grid.parse_window("100ms:150ms"))
    np.testing.assert_allclose(out, v[1000:1501])
    out, *_ = grid.onto_grid(rec, grid.Grid(1e-4, 501, default_start_s=0.2))
    np.testing.assert_allclose(out, v[2000:2501])


@pytest.mark.skipif(not ABF.is_file(), reason="shared recordings not present")
def test_abf_spikes_counted_and_mapped_onto_reset():
    (rec,) = recordings.read(ABF, sweeps=[15])
    g = grid.Grid(1e-4, 2501)
    flagged = grid.prepare([rec], g, window=(0.15, 0.4))
    reset = grid.prepare([rec], g, window=(0.15, 0.4), reset_spikes=True)
    assert flagged.spike_counts[0] == reset.spike_counts[0] > 3
    assert flagged.spike_peak_v[0] > 0.0 and flagged.voltage_v.max() > 0.0  # AP peaks near +40 mV
    # no AP peak is left (the resampling filter rounds the jump onto the reset by a few mV)
    assert reset.voltage_v.max() < -0.01 and reset.current_a[0, -1] == pytest.approx(100e-12)


# ---- bad input: one line each ---------------------------------------------------------------

def _write(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, np.ndarray):
        np.save(path, content)
    else:
        path.write_text(content)
    return path


@pytest.mark.parametrize("name, content, kwargs, match", [
    ("missing.csv", None, {}, "no such file"),
    ("empty.csv", "", {}, "the file is empty"),
    ("blank.csv", "\n\n", {}, "the file is empty"),
    ("words.csv", "a,b\nc,d\n", {}, "holds a header line and no numbers|could not be read"),
    ("garbage.npy", b"\x93NUMPY garbage bytes here", {}, "not a readable .npy"),
    ("garbage.npz", b"PK\x03\x04 not really a zip", {}, "not a readable .npz"),
    ("garbage.abf", b"ABF2" + bytes(200), {}, "could not be read as an ABF file"),
    ("cube.npy", np.zeros((2, 3, 4)), {}, r"shape \(2, 3, 4\)"),
    ("objects.npy", np.array([{"a": 1}], dtype=object), {}, "Python objects"),
    ("x.json", "{}", {}, "unknown format '.json'"),
    ("nokey.npz", None, {}, "expected an array named 'voltage'"),
    ("backwards.csv", "".join(f"{t},-70\n" for t in [*range(1, 20), 5, *range(20, 40)]), {"units": "mV"}, "not increasing"),
])
def test_bad_files_one_line(tmp_path, name, content, kwargs, match):
    path = tmp_path / name
    if name == "nokey.npz":
        np.savez(path, other=np.zeros(3))
    elif content is not None:
        _write(tmp_path, name, content)
    with pytest.raises(InputError, match=match) as exc:
        recordings.read(path, **kwargs)
    _one_line(exc.value)


def test_two_columns_whose_first_is_not_time(tmp_path):
    np.savetxt(tmp_path / "vi.csv", np.c_[_trace(), np.ones(501)], delimiter=",")
    with pytest.raises(InputError, match="pass --columns"):
        recordings.read(tmp_path / "vi.csv")


@pytest.mark.skipif(not (RECORDINGS / "mean_frequency_1.txt").is_file(), reason="shared recordings not present")
def test_variable_step_time_column_is_refused_with_the_reason():
    with pytest.raises(InputError, match="repeats times") as exc:
        recordings.read(RECORDINGS / "mean_frequency_1.txt", units="mV")
    _one_line(exc.value)


def test_non_uniform_time_column(tmp_path):
    t = np.cumsum(np.r_[0, np.full(200, 0.1), np.full(300, 0.2)])
    np.savetxt(tmp_path / "nu.txt", np.c_[t, _trace() * 1e3])
    with pytest.raises(InputError, match="not uniform"):
        recordings.read(tmp_path / "nu.txt", units="mV")


@pytest.mark.parametrize("v, match", [
    (np.r_[_trace(100), np.nan, _trace(400)], r"voltage sample 100 \(10 ms\) is nan"),
    (np.r_[_trace(10), np.inf, _trace(490)], "voltage sample 10 .* is inf"),
    (_trace() * 1e3, "looks like millivolts: pass --units mV"),
    (_trace() * 1e-3, "looks like volts read as millivolts: pass --units V"),
    (np.full(501, -0.07), "constant at -70 mV"),
])
def test_bad_traces_one_line(v, match):
    with pytest.raises(InputError, match=match) as exc:
        grid.onto_grid(Recording("r", v, 1e-4), GRID)
    _one_line(exc.value)


@pytest.mark.parametrize("n, window, match", [
    (400, None, "shorter than the model's window of 501"),
    (3001, None, "longer than the model's window .* pass --window"),
    (3001, (0.1, 0.2), "is 100 ms; the model takes windows of 50 ms"),
    (3001, (0.28, 0.33), "does not fit inside it"),
])
def test_window_errors(n, window, match):
    with pytest.raises(InputError, match=match) as exc:
        grid.onto_grid(Recording("r", _trace(n), 1e-4), GRID, window=window)
    _one_line(exc.value)


def test_a_recording_without_time_base_is_told_about_dt():
    """50 ms at 0.05 ms in one column: no time base, so the model's step is assumed; the answer names --dt."""
    with pytest.raises(InputError, match="pass --window START:END, or --dt"):
        grid.onto_grid(Recording("r", _trace(1001), None), GRID)


@pytest.mark.parametrize("text", ["0.1", "a:b", "0.2:0.1", "-1:2"])
def test_bad_window_text(text):
    with pytest.raises(InputError, match="--window"):
        grid.parse_window(text)


def test_incommensurate_step_is_refused():
    with pytest.raises(InputError, match="not a simple ratio"):
        grid.onto_grid(Recording("r", _trace(5000), 1e-4 / 2.9999), GRID, window=(0.0, 0.05))


@pytest.mark.skipif(not ABF.is_file(), reason="shared recordings not present")
def test_abf_bad_sweep_and_units_argument():
    with pytest.raises(InputError, match="holds sweeps 0 to 15"):
        recordings.read(ABF, sweeps=[16])
    with pytest.raises(InputError, match="carries its own units"):
        recordings.read(ABF, units="mV")
