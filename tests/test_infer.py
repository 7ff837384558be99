"""`python -m lif_sbi.infer`: a trained model on user traces, and one-line errors for bad input."""

import os
import subprocess
import sys

import numpy as np
import pytest

from lif_sbi.simulator import simulate_batch


def _run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "lif_sbi.infer", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "KERAS_BACKEND": "torch", **(env or {})})


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("infer")
    cmd = [sys.executable, "-m", "lif_sbi.train", "--config", "ci", "--results-dir", str(tmp / "results"), "--quiet",
           "--set", "data.n_traces=200", "--set", "training.epochs=1", "--set", "diagnostics.n_test=12",
           "--set", "diagnostics.n_draws=20"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "KERAS_BACKEND": "torch", "LIF_SBI_CACHE": str(tmp / "cache")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp / "results").iterdir()
    return run_dir


@pytest.mark.torch
def test_infers_user_traces_in_mv_and_writes_draws(trained_run, tmp_path):
    traces = simulate_batch(3, seed=5)["observables"][:, :, 0] * 1e3  # a user's file in mV
    np.savetxt(tmp_path / "traces.csv", traces, delimiter=",")
    out = tmp_path / "draws.npz"
    proc = _run(trained_run, tmp_path / "traces.csv", "--units", "mV", "--draws", "50", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 trace(s) x 50 draws" in proc.stdout and "V_th" in proc.stdout and "mV" in proc.stdout
    assert "Sampling" not in proc.stderr and "Summarizing" not in proc.stderr, proc.stderr  # BayesFlow's bars
    # the ci run fitted width factors; infer applies them and says so
    assert (trained_run / "calibration.json").is_file()
    assert "posterior widths rescaled by the run's calibration.json" in proc.stdout
    with np.load(out) as f:
        assert f["draws"].shape == (3, 50, 6) and np.isfinite(f["draws"]).all()
        assert list(f["names"]) == ["C_m", "g_L", "E_L", "V_th", "V_res", "t_ref"]


def _bad(tmp_path, name, content):
    path = tmp_path / name
    if name.endswith(".npy"):
        np.save(path, content)
    else:
        path.write_text(content)
    return path


@pytest.mark.parametrize(
    "make, extra, match",
    [
        (lambda t: _bad(t, "short.npy", np.zeros((2, 400))), [], r"shape \(2, 400\): expected \(N, 501\)"),
        (lambda t: _bad(t, "nan.npy", np.full((1, 501), np.nan)), [], "NaN or inf"),
        (lambda t: _bad(t, "mv.npy", np.full((1, 501), -70.0)), [], "expected volts"),
        (lambda t: _bad(t, "words.csv", "a,b,c\n"), [], "could not be read"),
        (lambda t: _bad(t, "x.json", "{}"), [], "expected a .npy, .csv or .txt"),
        (lambda t: t / "missing.npy", [], "does not exist"),
        (lambda t: _bad(t, "ok.npy", np.full((1, 501), -0.07)), ["--draws", "0"], "--draws"),
        (lambda t: _bad(t, "ok.npy", np.full((1, 501), -0.07)), ["--units", "uV"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_exit_2(make, extra, match, tmp_path):
    model = tmp_path / "model.keras"
    model.write_bytes(b"placeholder")  # never opened: input is checked first
    proc = _run(model, make(tmp_path), *extra)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert __import__("re").search(match, lines[0]), lines[0]


def test_missing_model_is_one_line_exit_2(tmp_path):
    np.save(tmp_path / "ok.npy", np.full((1, 501), -0.07))
    proc = _run(tmp_path / "nope", tmp_path / "ok.npy")
    assert proc.returncode == 2 and "expected a run folder holding model.keras" in proc.stderr


@pytest.mark.torch
def test_posterior_draws_stay_inside_the_prior(trained_run):
    """A barely trained flow leaks far outside the prior: every returned draw must be inside it."""
    script = (
        "import numpy as np, lif_sbi.estimator as e, lif_sbi.simulator as s, lif_sbi.priors as p\n"
        f"a = e.load_approximator({str(trained_run / 'model.keras')!r})\n"
        "d = s.simulate_batch(6, seed=3)\n"
        "raw = e.sample_posterior(a, d['observables'], 200, seed=0, within_prior=False)\n"
        "x, acc = e.sample_posterior(a, d['observables'], 200, seed=0, return_acceptance=True)\n"
        "assert x.shape == (6, 200, 6) and ((x >= p.LOW) & (x <= p.HIGH)).all()\n"
        "assert p.in_support(x).all()  # also traces with no draw in the support (repaired, acc 0)\n"
        "assert ((0 < acc) & (acc <= 1)).all()\n"
        "print('leak', 1 - p.in_support(p.onto_atoms(raw)).mean(), 'acc', acc.mean())\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "KERAS_BACKEND": "torch"})
    assert proc.returncode == 0 and "leak" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.torch
def test_a_known_current_model_needs_the_current_and_uses_it(noisy_steps_run, tmp_path):
    """A model trained with model.observe_current: one line and exit 2 without --current; draws with it; a row-count mismatch is refused."""
    from lif_sbi.config import load_config

    cfg = load_config(str(noisy_steps_run / "config.toml"))
    data = simulate_batch(2, seed=3, stimulus=cfg.stimulus, prior="ordered")
    np.save(tmp_path / "traces.npy", data["observables"][:, :, 0])
    np.save(tmp_path / "current.npy", data["current"] * 1e12)
    proc = _run(noisy_steps_run, tmp_path / "traces.npy")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "pass --current FILE" in proc.stderr, proc.stderr
    proc = _run(noisy_steps_run, tmp_path / "traces.npy", "--current", tmp_path / "current.npy", "--current-units", "pA", "--draws", "30")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 trace(s) x 30 draws" in proc.stdout
    np.save(tmp_path / "one.npy", data["current"][:1])
    proc = _run(noisy_steps_run, tmp_path / "traces.npy", "--current", tmp_path / "one.npy")
    assert proc.returncode == 2 and "holds 1 row(s) for 2 trace(s)" in proc.stderr
