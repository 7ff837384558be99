"""`python -m lif_sbi.infer`: a trained run on a scientist's recordings, honest verdicts, complete outputs, one line for bad input."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lif_sbi import infer
from lif_sbi.config import load_config
from lif_sbi.simulator import simulate_batch

RECORDINGS = Path(__file__).resolve().parents[2] / "shared" / "recordings"
ABF = RECORDINGS / "17o05028_ic_steps.abf"


def _run(*args):
    return subprocess.run([sys.executable, "-m", "lif_sbi.infer", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "KERAS_BACKEND": "torch"})


def _simulated(run_dir, n, seed, shift_mv=0.0):
    """n noisy traces of the run's own set-up (mV) and their currents (pA), as a user's .npz."""
    cfg = load_config(str(run_dir / "config.toml"))
    d = simulate_batch(n, seed=seed, stimulus=cfg.stimulus, prior=cfg.prior.kind)
    v = d["observables"][:, :, 0] * 1e3 + np.random.default_rng(seed).normal(0, cfg.noise.sd_v * 1e3, (n, cfg.stimulus.n_samples))
    return {"voltage": v + shift_mv, "current": d["current"] * 1e12, "dt_s": cfg.stimulus.dt_s}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A `ci` run (reference window, current not observed, widths calibrated) at smoke size."""
    tmp = tmp_path_factory.mktemp("infer")
    cmd = [sys.executable, "-m", "lif_sbi.train", "--config", "ci", "--results-dir", str(tmp / "results"), "--quiet",
           "--set", "data.n_traces=200", "--set", "training.epochs=1", "--set", "diagnostics.n_test=12",
           "--set", "diagnostics.n_draws=20", "--set", "diagnostics.validity_traces=50"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "KERAS_BACKEND": "torch", "LIF_SBI_CACHE": str(tmp / "cache")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp / "results").iterdir()
    return run_dir


@pytest.mark.torch
def test_recordings_with_their_current_get_verdicts_and_every_output(noisy_steps_run, tmp_path):
    np.savez(tmp_path / "cell.npz", **_simulated(noisy_steps_run, 4, seed=11))
    out = tmp_path / "answer"
    proc = _run(noisy_steps_run, tmp_path / "cell.npz", "--units", "mV", "--current-units", "pA", "--draws", "200", "--out", out)
    verdicts = json.loads((out / "verdicts.json").read_text())["traces"]
    valid = [v["valid"] for v in verdicts]
    assert proc.returncode == (0 if all(valid) else 3), proc.stderr[-3000:]
    assert sum(valid) >= 3, verdicts  # traces of the model's own set-up: the check passes (nearly) all
    assert proc.stderr == "", proc.stderr  # no library noise
    assert "4 trace(s) x 200 draws" in proc.stdout and "ms per trace" in proc.stdout and "false alarms" in proc.stdout
    for name in ("draws.npz", "draws.csv", "summary.csv", "summary.txt", "posterior.nc", "plots/posterior_predictive.png"):
        assert (out / name).is_file(), name
    assert list(out.glob("plots/pairs_*.png"))
    with np.load(out / "draws.npz") as f:
        assert f["draws"].shape == (4, 200, 6) and list(f["parameters"]) == ["C_m", "g_L", "E_L", "V_th", "V_res", "t_ref"]
        assert np.isfinite(f["draws"][f["valid"]]).all()
    import arviz as az

    idata = az.from_netcdf(str(out / "posterior.nc"))
    assert idata.posterior["C_m"].shape == (1, 200, sum(valid))
    summary = (out / "summary.csv").read_text().splitlines()
    assert summary[0] == "trace,parameter,mean,sd,q5,q50,q95,unit" and len(summary) == 1 + 6 * sum(valid)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


@pytest.mark.torch
def test_refine_replaces_valid_posteriors_by_importance_sampled_ones_and_records_how(noisy_steps_run, tmp_path):
    """--refine: every valid trace's draws come from lif_sbi.refine (narrower than the smoke run's
    flow), verdicts.json records its effective sample size and residual ratio per trace."""
    np.savez(tmp_path / "cell.npz", **_simulated(noisy_steps_run, 2, seed=21))
    common = ["--units", "mV", "--current-units", "pA", "--draws", "300"]
    plain = _run(noisy_steps_run, tmp_path / "cell.npz", *common, "--out", tmp_path / "plain")
    proc = _run(noisy_steps_run, tmp_path / "cell.npz", *common, "--refine", "--out", tmp_path / "refined")
    assert proc.returncode == plain.returncode, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr == "", proc.stderr
    meta = json.loads((tmp_path / "refined" / "verdicts.json").read_text())["meta"]
    valid = json.loads((tmp_path / "refined" / "verdicts.json").read_text())["traces"]
    assert len(meta["refined"]) == sum(v["valid"] for v in valid) >= 1
    assert "refined " in proc.stdout and "residual rms / noise sd" in proc.stdout
    for r in meta["refined"]:
        assert r["converged"] and r["ess"] >= 2000 and 0.9 < r["residual_ratio"] < 1.1, r
    with np.load(tmp_path / "plain" / "draws.npz") as f, np.load(tmp_path / "refined" / "draws.npz") as g:
        k = np.flatnonzero(g["valid"])[0]
        assert g["draws"].shape == f["draws"].shape
        assert g["draws"][k, :, 0].std() < 0.5 * f["draws"][k, :, 0].std()  # C_m: the exact posterior is far narrower


def test_refine_on_a_run_without_an_exact_likelihood_is_one_line_exit_2(trained_run, tmp_path, capsys):
    np.save(tmp_path / "v.npy", simulate_batch(1, seed=5)["observables"][:, :, 0])
    out = tmp_path / "o"
    code = infer.main([str(trained_run), str(tmp_path / "v.npy"), "--refine", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "refining needs a run whose set-up has an exact likelihood" in err and "observe_current = false" in err
    assert not out.exists()


@pytest.mark.torch
def test_traces_outside_the_training_distribution_get_no_numbers_and_exit_3(noisy_steps_run, tmp_path):
    """A cell 20 mV above the priors (E_L, V_th and V_res shifted), a flat noisy line: no valid posterior."""
    sim = _simulated(noisy_steps_run, 2, seed=12, shift_mv=20.0)
    flat = -70.0 + np.random.default_rng(0).normal(0, 0.5, (1, sim["voltage"].shape[1]))
    np.savez(tmp_path / "odd.npz", voltage=np.r_[sim["voltage"], flat], current=np.r_[sim["current"], sim["current"][:1]], dt_s=sim["dt_s"])
    out = tmp_path / "odd"
    proc = _run(noisy_steps_run, tmp_path / "odd.npz", "--units", "mV", "--current-units", "pA", "--draws", "100", "--out", out)
    assert proc.returncode == infer.EXIT_INVALID, proc.stderr[-3000:]
    assert proc.stdout.count("NO VALID POSTERIOR") == 3 and "3 of 3 trace(s) have no valid posterior" in proc.stdout
    assert "E_L's prior is -80 to -65 mV" in proc.stdout  # the shifted cell: the parameter named
    with np.load(out / "draws.npz") as f:
        assert np.isnan(f["draws"]).all() and not f["valid"].any()
    assert (out / "summary.csv").read_text().strip() == "trace,parameter,mean,sd,q5,q50,q95,unit"


@pytest.mark.torch
@pytest.mark.skipif(not ABF.is_file(), reason="shared recordings not present")
def test_an_abf_file_is_one_batched_call_with_its_command_current(noisy_steps_run, tmp_path):
    """All 16 sweeps at 20 kHz, resampled onto the model's 0.1 ms, its command channel as the current;
    the cell rests near -45 mV, far above these priors: every sweep is refused, naming E_L or V_th."""
    out = tmp_path / "abf"
    proc = _run(noisy_steps_run, ABF, "--window", "0.14:0.19", "--spikes", "reset", "--draws", "100", "--out", out)
    assert proc.returncode == infer.EXIT_INVALID, proc.stderr[-3000:]
    assert "16 trace(s) x 100 draws" in proc.stdout and proc.stdout.count("NO VALID POSTERIOR") == 16
    verdicts = json.loads((out / "verdicts.json").read_text())["traces"]
    assert all(any("V_th" in r or "E_L" in r for r in v["reasons"]) for v in verdicts)
    assert (out / "plots" / "posterior_predictive.png").is_file()
    # the sampler's notes are lif_sbi's own (draws outside the prior), no library's deprecation notes
    notes = json.loads((out / "verdicts.json").read_text())["meta"]["notes"]
    assert all("trace(s)" in n for n in notes if n.startswith("sampling:")), notes


@pytest.mark.torch
def test_an_existing_output_is_kept_unless_forced(noisy_steps_run, tmp_path):
    np.savez(tmp_path / "c.npz", **_simulated(noisy_steps_run, 1, seed=13))
    args = [noisy_steps_run, tmp_path / "c.npz", "--units", "mV", "--current-units", "pA", "--draws", "50", "--out", tmp_path / "o"]
    assert _run(*args).returncode in (0, 3)
    (tmp_path / "o" / "mine.txt").write_text("keep")
    proc = _run(*args)
    assert proc.returncode == 2 and "exists; pass --force" in proc.stderr and (tmp_path / "o" / "mine.txt").is_file()
    assert _run(*args, "--force").returncode in (0, 3)
    assert not (tmp_path / "o" / "mine.txt").exists() and (tmp_path / "o" / "draws.npz").is_file()


@pytest.mark.slow  # 60 s: its own ci run
@pytest.mark.torch
def test_a_calibrated_run_says_so_and_takes_traces_in_volts(trained_run, tmp_path):
    np.save(tmp_path / "v.npy", simulate_batch(2, seed=5)["observables"][:, :, 0])
    proc = _run(trained_run, tmp_path / "v.npy", "--draws", "50", "--out", tmp_path / "o")
    assert proc.returncode in (0, 3), proc.stderr[-3000:]
    assert "posterior widths rescaled by the run's calibration.json" in proc.stdout


# ---- bad input: one line, exit 2, nothing written ----------------------------------------------

def _bad_case(tmp_path, kind, run_dir):
    """(argv, expected text) for one kind of bad input."""
    good = _simulated(run_dir, 1, seed=14)
    t = tmp_path
    if kind == "missing":
        return [run_dir, t / "nope.npz"], "no such file"
    if kind == "empty":
        (t / "e.csv").write_text("")
        return [run_dir, t / "e.csv"], "the file is empty"
    if kind == "garbage":
        (t / "g.npy").write_bytes(os.urandom(300))
        return [run_dir, t / "g.npy"], "not a readable .npy"
    if kind == "dimensions":
        np.save(t / "d.npy", np.zeros((2, 3, 4)))
        return [run_dir, t / "d.npy"], r"shape \(2, 3, 4\)"
    if kind == "nan":
        v = good["voltage"].copy()
        v[0, 123] = np.nan
        np.savez(t / "n.npz", voltage=v, current=good["current"], dt_s=good["dt_s"])
        return [run_dir, t / "n.npz", "--units", "mV", "--current-units", "pA"], r"voltage sample 123 \(12.3 ms\) is nan"
    if kind == "short":
        np.savez(t / "s.npz", voltage=good["voltage"][:, :300], current=good["current"][:, :300], dt_s=good["dt_s"])
        return [run_dir, t / "s.npz", "--units", "mV", "--current-units", "pA"], "shorter than the model's window"
    if kind == "time-not-increasing":
        tt = np.arange(501) * 0.1
        tt[200] = tt[100]
        np.savetxt(t / "t.csv", np.c_[tt, good["voltage"][0], good["current"][0]], delimiter=",")
        return [run_dir, t / "t.csv", "--units", "mV", "--current-units", "pA"], "not increasing"
    if kind == "time-not-uniform":
        tt = np.r_[np.arange(300) * 0.1, 29.9 + np.arange(1, 202) * 0.2]
        np.savetxt(t / "u.csv", np.c_[tt, good["voltage"][0], good["current"][0]], delimiter=",")
        return [run_dir, t / "u.csv", "--units", "mV", "--current-units", "pA"], "not uniform"
    if kind == "mV-given-as-V":
        np.savez(t / "m.npz", **good)
        return [run_dir, t / "m.npz", "--current-units", "pA"], "looks like millivolts: pass --units mV"
    if kind == "V-given-as-mV":
        np.savez(t / "v.npz", voltage=good["voltage"] * 1e-3, current=good["current"], dt_s=good["dt_s"])
        return [run_dir, t / "v.npz", "--units", "mV", "--current-units", "pA"], "looks like volts read as millivolts"
    if kind == "constant":
        np.savez(t / "c.npz", voltage=np.full_like(good["voltage"], -70.0), current=good["current"], dt_s=good["dt_s"])
        return [run_dir, t / "c.npz", "--units", "mV", "--current-units", "pA"], "constant at -70 mV"
    if kind == "no-current":
        np.save(t / "v.npy", good["voltage"])
        return [run_dir, t / "v.npy", "--units", "mV"], "observes the injected current"
    if kind == "unfinished-run":
        (t / "run").mkdir()
        shutil.copy(run_dir / "config.toml", t / "run")
        np.savez(t / "ok.npz", **good)
        return [t / "run", t / "ok.npz"], "not a finished run"
    if kind == "swapped":
        np.savez(t / "ok.npz", **good)
        return [t / "ok.npz", run_dir], "arguments swapped"
    if kind == "bad-sweeps":
        return [run_dir, ABF, "--sweeps", "3-1"], "--sweeps '3-1'"
    raise AssertionError(kind)


BAD = ["missing", "empty", "garbage", "dimensions", "nan", "short", "time-not-increasing", "time-not-uniform",
       "mV-given-as-V", "V-given-as-mV", "constant", "no-current", "unfinished-run", "swapped", "bad-sweeps"]


@pytest.mark.parametrize("kind", BAD)
def test_bad_input_is_one_line_exit_2_nothing_written(kind, noisy_steps_run, tmp_path, capsys):
    """Checked before the model loads: in-process, fast."""
    argv, match = _bad_case(tmp_path, kind, noisy_steps_run)
    out = tmp_path / "out"
    code = infer.main([str(a) for a in argv] + ["--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert __import__("re").search(match, err), err
    assert not out.exists() and not (noisy_steps_run / "inference").exists()


@pytest.mark.torch
@pytest.mark.parametrize("damage", ["truncated", "foreign-zip"])
def test_a_corrupt_or_foreign_model_is_one_line_exit_2(damage, noisy_steps_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(noisy_steps_run, run)
    model = run / "model.keras"
    if damage == "truncated":
        model.write_bytes(model.read_bytes()[:5000])
    else:
        import zipfile

        with zipfile.ZipFile(model, "w") as z:
            z.writestr("config.json", json.dumps({"class_name": "NoSuchLayer", "config": {}}))
    np.savez(tmp_path / "ok.npz", **_simulated(noisy_steps_run, 1, seed=15))
    proc = _run(run, tmp_path / "ok.npz", "--units", "mV", "--current-units", "pA", "--out", tmp_path / "o")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "model.keras" in lines[0] and ("corrupt" in lines[0] or "incompatible" in lines[0]), lines[0]
    assert not (tmp_path / "o").exists()


def test_sweep_lists():
    assert infer.parse_sweeps("0,3,5-7") == [0, 3, 5, 6, 7] and infer.parse_sweeps(None) is None


@pytest.mark.torch
def test_no_space_for_the_outputs_is_one_line_exit_4_and_keeps_the_old_ones(noisy_steps_run, tmp_path, monkeypatch, capsys):
    """--force over a complete answer on a full disk: one line naming the file and the cause, exit
    4, the old answer untouched and no temporary folder left."""
    import errno

    from lif_sbi import outputs

    np.savez(tmp_path / "c.npz", **_simulated(noisy_steps_run, 1, seed=13))
    out = tmp_path / "o"
    args = [str(noisy_steps_run), str(tmp_path / "c.npz"), "--units", "mV", "--current-units", "pA", "--draws", "50", "--out", str(out)]
    assert infer.main(args) in (0, 3)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()

    def full(path, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(outputs, "_csv", full)
    assert infer.main([*args, "--force"]) == 4
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"cannot write {out}/summary.csv: No space left on device (ENOSPC)" in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz", "o"]
