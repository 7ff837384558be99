"""lif_sbi.recordings.nwb: CurrentClampSeries and their stimuli read from NWB files built with pynwb."""

from __future__ import annotations

import datetime
import warnings
from pathlib import Path

import numpy as np
import pytest

pynwb = pytest.importorskip("pynwb")
from pynwb.icephys import CurrentClampSeries, CurrentClampStimulusSeries, VoltageClampSeries  # noqa: E402

from lif_sbi.recordings import InputError  # noqa: E402
from lif_sbi.recordings.nwb import read_nwb  # noqa: E402

RECORDINGS = Path(__file__).resolve().parents[2] / "shared" / "recordings"
ABF = RECORDINGS / "17o05028_ic_steps.abf"
RATE = 10_000.0


def _nwbfile():
    nwbfile = pynwb.NWBFile(session_description="test", identifier="lif-sbi-test",
                            session_start_time=datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc))
    device = nwbfile.create_device(name="amplifier")
    electrode = nwbfile.create_icephys_electrode(name="elec0", description="patch pipette", device=device)
    return nwbfile, electrode


def _write(path: Path, nwbfile) -> Path:
    with warnings.catch_warnings():  # pynwb's own warnings on writing are not the reader's business
        warnings.simplefilter("ignore")
        with pynwb.NWBHDF5IO(str(path), "w") as io:
            io.write(nwbfile)
    return path


def _ccs(electrode, name, data_mv, sweep=None, **kw):
    kw.setdefault("rate", RATE)
    return CurrentClampSeries(name=name, data=np.asarray(data_mv), electrode=electrode, gain=1.0, conversion=1e-3,
                              sweep_number=None if sweep is None else np.uint32(sweep), **kw)


def _stim(electrode, name, data_pa, sweep=None):
    return CurrentClampStimulusSeries(name=name, data=np.asarray(data_pa), electrode=electrode, gain=1.0, rate=RATE,
                                      conversion=1e-12, sweep_number=None if sweep is None else np.uint32(sweep))


def _three_sweeps(tmp_path: Path, names=("s0", "s1", "s2"), stim_sweeps=(0, 1, 2)) -> Path:
    """Sweep k: voltage -70 + k mV (plus a ramp), current 10 k pA; series named `names` in sweep order."""
    rng = np.random.default_rng(0)
    nwbfile, el = _nwbfile()
    for k, name in enumerate(names):
        nwbfile.add_acquisition(_ccs(el, name, -70.0 + k + rng.normal(0, 0.1, 200), sweep=k))
    for k in stim_sweeps:
        nwbfile.add_stimulus(_stim(el, f"stim{k}", np.full(200, 10.0 * k), sweep=k))
    return _write(tmp_path / "three.nwb", nwbfile)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_real_abf_sweeps_round_trip(tmp_path):
    if not ABF.is_file():
        pytest.skip(f"{ABF} is missing")
    pyabf = pytest.importorskip("pyabf")
    abf = pyabf.ABF(str(ABF))
    picked = [15, 0, 7]  # written in this order; read back in sweep_number order
    nwbfile, el = _nwbfile()
    expected = {}
    for i in picked:
        abf.setSweep(i)
        start = i * abf.sweepLengthSec
        nwbfile.add_acquisition(_ccs(el, f"abf_sweep_{i:02d}", abf.sweepY.copy(), sweep=i, rate=float(abf.sampleRate),
                                     starting_time=start))
        stim = CurrentClampStimulusSeries(name=f"abf_stim_{i:02d}", data=abf.sweepC.copy(), electrode=el, gain=1.0,
                                          rate=float(abf.sampleRate), starting_time=start, conversion=1e-12,
                                          sweep_number=np.uint32(i))
        nwbfile.add_stimulus(stim)
        expected[i] = (abf.sweepY.astype(np.float64) * 1e-3, abf.sweepC.astype(np.float64) * 1e-12, start)
    path = _write(tmp_path / "cell.nwb", nwbfile)

    recs = read_nwb(path)
    assert [r.name for r in recs] == ["cell.nwb sweep 0", "cell.nwb sweep 1", "cell.nwb sweep 2"]
    for rec, i in zip(recs, sorted(picked)):
        v, c, start = expected[i]
        assert rec.voltage_v.dtype == np.float64 and rec.current_a.dtype == np.float64
        np.testing.assert_allclose(rec.voltage_v, v, rtol=1e-12, atol=0)
        np.testing.assert_allclose(rec.current_a, c, rtol=1e-12, atol=0)
        assert rec.dt_s == pytest.approx(1 / abf.sampleRate, rel=1e-12)
        assert rec.start_s == pytest.approx(start)
        assert -0.12 < rec.voltage_v.min() and rec.voltage_v.max() < 0.06  # volts, not mV
    # the step amplitude rises by 10 pA per sweep: -50 + 10 i pA at 0.3 s
    k = int(0.3 * abf.sampleRate)
    assert [round(r.current_a[k] * 1e12) for r in recs] == [-50 + 10 * i for i in sorted(picked)]


def test_sweeps_select_in_the_order_given(tmp_path):
    path = _three_sweeps(tmp_path)
    recs = read_nwb(path, sweeps=[2, 0])
    assert [r.name for r in recs] == ["three.nwb sweep 2", "three.nwb sweep 0"]
    assert recs[0].voltage_v.mean() == pytest.approx(-0.068, abs=1e-4)
    assert recs[1].voltage_v.mean() == pytest.approx(-0.070, abs=1e-4)
    np.testing.assert_allclose(recs[0].current_a, 20e-12)
    assert recs[0].dt_s == pytest.approx(1 / RATE)


def test_order_follows_sweep_number_not_names(tmp_path):
    path = _three_sweeps(tmp_path, names=("zeta", "alpha", "mu"))
    means = [r.voltage_v.mean() for r in read_nwb(path)]
    np.testing.assert_allclose(means, [-0.070, -0.069, -0.068], atol=1e-4)


def test_without_sweep_numbers_order_by_name_and_match_stimuli_by_order(tmp_path):
    nwbfile, el = _nwbfile()
    for name, mv in [("b", -60.0), ("a", -70.0)]:
        nwbfile.add_acquisition(_ccs(el, name, np.full(50, mv)))
    for name, pa in [("stim_b", 5.0), ("stim_a", 1.0)]:
        nwbfile.add_stimulus(_stim(el, name, np.full(50, pa)))
    recs = read_nwb(_write(tmp_path / "nosweep.nwb", nwbfile))
    np.testing.assert_allclose([r.voltage_v[0] for r in recs], [-0.070, -0.060])
    np.testing.assert_allclose([r.current_a[0] for r in recs], [1e-12, 5e-12])


def test_series_without_matching_stimulus_has_no_current(tmp_path):
    recs = read_nwb(_three_sweeps(tmp_path, stim_sweeps=(0, 2)))
    assert recs[0].current_a is not None and recs[2].current_a is not None
    assert recs[1].current_a is None
    assert recs[1].voltage_v.shape == (200,)


def test_offset_and_uniform_timestamps(tmp_path):
    nwbfile, el = _nwbfile()
    t = 0.5 + np.arange(100) * 2e-4
    nwbfile.add_acquisition(CurrentClampSeries(name="ts", data=np.full(100, 5.0), electrode=el, gain=1.0, conversion=1e-3,
                                               offset=-0.075, timestamps=t))
    (rec,) = read_nwb(_write(tmp_path / "ts.nwb", nwbfile))
    np.testing.assert_allclose(rec.voltage_v, -0.070, rtol=1e-12)
    assert rec.dt_s == pytest.approx(2e-4, rel=1e-9) and rec.start_s == pytest.approx(0.5)
    assert rec.current_a is None


def test_non_uniform_timestamps_are_refused(tmp_path):
    nwbfile, el = _nwbfile()
    t = np.cumsum(np.random.default_rng(1).uniform(1e-4, 5e-4, 100))
    nwbfile.add_acquisition(CurrentClampSeries(name="jitter", data=np.zeros(100), electrode=el, gain=1.0, timestamps=t))
    with pytest.raises(InputError) as exc:
        read_nwb(_write(tmp_path / "jitter.nwb", nwbfile))
    assert "'jitter'" in _one_line(exc) and "not uniform" in str(exc.value)


def test_file_unit_named_on_disk_is_honoured(tmp_path):
    """pynwb replaces a CurrentClampSeries' unit with "volts" on reading; the reader looks at the file's own."""
    import h5py

    nwbfile, el = _nwbfile()
    nwbfile.add_acquisition(CurrentClampSeries(name="old", data=np.full(10, -65.0), electrode=el, gain=1.0, rate=RATE))
    path = _write(tmp_path / "old.nwb", nwbfile)
    with h5py.File(path, "a") as f:
        f["acquisition/old/data"].attrs["unit"] = "mV"
    (rec,) = read_nwb(path)
    np.testing.assert_allclose(rec.voltage_v, -0.065)
    with h5py.File(path, "a") as f:
        f["acquisition/old/data"].attrs["unit"] = "furlongs"
    with pytest.raises(InputError) as exc:
        read_nwb(path)
    assert "'furlongs'" in _one_line(exc) and "'volts'" in str(exc.value)


def test_stimulus_length_mismatch_names_both_lengths(tmp_path):
    nwbfile, el = _nwbfile()
    nwbfile.add_acquisition(_ccs(el, "v", np.zeros(100), sweep=0))
    nwbfile.add_stimulus(_stim(el, "i", np.zeros(90), sweep=0))
    with pytest.raises(InputError) as exc:
        read_nwb(_write(tmp_path / "mismatch.nwb", nwbfile))
    text = _one_line(exc)
    assert "90" in text and "100" in text and "mismatch.nwb" in text


def test_voltage_clamp_only_names_what_the_file_holds(tmp_path):
    nwbfile, el = _nwbfile()
    nwbfile.add_acquisition(VoltageClampSeries(name="vc_sweep", data=np.zeros(10), electrode=el, gain=1.0, rate=RATE))
    with pytest.raises(InputError) as exc:
        read_nwb(_write(tmp_path / "vc.nwb", nwbfile))
    text = _one_line(exc)
    assert "VoltageClampSeries 'vc_sweep'" in text and "expected CurrentClampSeries" in text and "vc.nwb" in text


def test_empty_series_is_refused(tmp_path):
    nwbfile, el = _nwbfile()
    nwbfile.add_acquisition(_ccs(el, "nothing", np.zeros(0), sweep=0))
    with pytest.raises(InputError) as exc:
        read_nwb(_write(tmp_path / "empty.nwb", nwbfile))
    assert "'nothing'" in _one_line(exc) and "no samples" in str(exc.value)


@pytest.mark.parametrize("content", ["random", "hdf5", "empty", "truncated"])
def test_not_an_nwb_file(tmp_path, content):
    path = tmp_path / "x.nwb"
    if content == "random":
        path.write_bytes(np.random.default_rng(2).bytes(4096))
    elif content == "hdf5":
        import h5py

        with h5py.File(path, "w") as f:
            f["x"] = np.arange(3)
    elif content == "truncated":
        whole = _three_sweeps(tmp_path).read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    else:
        path.write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError) as exc:
            read_nwb(path)
    text = _one_line(exc)
    assert str(path) in text and "could not be read as NWB" in text


def test_missing_file(tmp_path):
    with pytest.raises(InputError) as exc:
        read_nwb(tmp_path / "absent.nwb")
    assert "no such file" in _one_line(exc)


@pytest.mark.parametrize("bad", [3, -1])
def test_out_of_range_sweep(tmp_path, bad):
    with pytest.raises(InputError) as exc:
        read_nwb(_three_sweeps(tmp_path), sweeps=[0, bad])
    text = _one_line(exc)
    assert f"sweep {bad}" in text and "0 to 2" in text


def test_reading_emits_no_warnings(tmp_path):
    path = _three_sweeps(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        recs = read_nwb(path)
    assert len(recs) == 3
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read_nwb(path, sweeps=[1])
    assert caught == []


def test_arrays_outlive_the_file(tmp_path):
    path = _three_sweeps(tmp_path)
    recs = read_nwb(path)
    path.unlink()  # the reader closed the file and copied its arrays out
    assert all(isinstance(r.voltage_v, np.ndarray) and np.isfinite(r.voltage_v).all() for r in recs)


@pytest.mark.torch
def test_an_nwb_file_through_infer_with_its_stimulus(tmp_path, noisy_steps_run):
    """`python -m lif_sbi.infer RUN_DIR cell.nwb`: the stimulus series is the known current (no
    --current needed), 20 kHz resampled onto the model's 0.1 ms; this cell is outside the
    reference priors, which the answer says (exit 3)."""
    import os
    import subprocess
    import sys

    if not ABF.is_file():
        pytest.skip(f"{ABF} is missing")
    pyabf = pytest.importorskip("pyabf")
    abf = pyabf.ABF(str(ABF))
    nwbfile, el = _nwbfile()
    for i in (0, 15):
        abf.setSweep(i)
        nwbfile.add_acquisition(_ccs(el, f"sweep_{i:02d}", abf.sweepY.copy(), sweep=i, rate=float(abf.sampleRate)))
        nwbfile.add_stimulus(CurrentClampStimulusSeries(name=f"stim_{i:02d}", data=abf.sweepC.copy(), electrode=el, gain=1.0,
                                                        rate=float(abf.sampleRate), conversion=1e-12, sweep_number=np.uint32(i)))
    path = _write(tmp_path / "cell.nwb", nwbfile)
    proc = subprocess.run([sys.executable, "-m", "lif_sbi.infer", str(noisy_steps_run), str(path), "--window", "0.14:0.19",
                           "--spikes", "reset", "--draws", "50", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "KERAS_BACKEND": "torch"})
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "2 trace(s) x 50 draws" in proc.stdout and proc.stdout.count("NO VALID POSTERIOR") == 2
    assert "cell.nwb sweep 1: NO VALID POSTERIOR" in proc.stdout and "V_th's prior" in proc.stdout
