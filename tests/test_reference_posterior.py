"""Exact reference posteriors: the likelihood against the float64 reference simulator, the MCMC machinery on a known target, and convergence checks that can fail."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lif_sbi import reference_posterior as rp
from lif_sbi.priors import INDEX, sample_prior
from lif_sbi.simulator import simulate, simulate_reference
from lif_sbi.stimulus import pulse

ROOT = Path(__file__).resolve().parents[1]
DT, SD = 1e-4, 0.5e-3


def _observation(seed=3, amplitude=1.5e-9):
    """One step-driven observation: theta (1, 6) SI, current (501,) A, noisy trace (501,) V."""
    theta = sample_prior(1, seed, kind="ordered")
    cur = pulse([amplitude], [0.01], [0.03], 501, DT).numpy()[0]
    v = simulate(theta, cur[None], DT, dtype=torch.float64).numpy()[0]
    return theta, cur, v + np.random.default_rng(seed).normal(0.0, SD, 501)


def test_log_likelihood_is_the_gaussian_density_around_the_reference_simulator():
    """log_likelihood equals sum log N(x; V_ref(theta), sd²) with V_ref from simulate_reference, for several thetas at once."""
    theta0, cur, x = _observation()
    thetas = np.concatenate([theta0, sample_prior(4, 11, kind="ordered")])
    v_ref = simulate_reference(thetas, np.broadcast_to(cur, (5, 501)), DT)
    expected = np.sum(-0.5 * ((x - v_ref) / SD) ** 2 - np.log(SD * np.sqrt(2 * np.pi)), axis=1)
    np.testing.assert_allclose(rp.log_likelihood(thetas, x, cur, DT, SD), expected, rtol=1e-9)
    assert np.argmax(expected) == 0  # the generating theta explains its own trace best


def test_log_posterior_is_minus_infinity_outside_the_ordered_prior_without_simulating():
    """LogPosterior: -inf where V_res > E_L - 2 mV or outside the box (nothing simulated there), finite inside."""
    theta, cur, x = _observation()
    lp = rp.LogPosterior(x, cur, DT, SD)
    bad_order = theta.copy()
    bad_order[0, INDEX["V_res"]] = theta[0, INDEX["E_L"]] - 1e-3
    outside = theta.copy()
    outside[0, INDEX["C_m"]] = 250e-12
    out = lp(rp.to_unit(np.concatenate([theta, bad_order, outside])))
    assert np.isfinite(out[0]) and out[1] == -np.inf and out[2] == -np.inf
    np.testing.assert_allclose(rp.from_unit(rp.to_unit(theta)), theta, rtol=1e-12)


def test_split_rhat_is_one_for_mixed_chains_and_large_for_stuck_ones():
    """split_rhat ≈ 1 for independent draws of one target; > 1.1 when one chain sits elsewhere or drifts."""
    rng = np.random.default_rng(0)
    mixed = rng.normal(size=(4, 2000, 6))
    assert np.all(np.abs(rp.split_rhat(mixed) - 1) < 0.01)
    stuck = mixed.copy()
    stuck[0] += 2.0
    assert np.all(rp.split_rhat(stuck) > 1.1)
    drifting = mixed + np.linspace(0, 3, 2000)[None, :, None]  # the halves of every chain disagree
    assert np.all(rp.split_rhat(drifting) > 1.1)


def test_run_chain_recovers_a_known_gaussian_posterior():
    """run_chain on a correlated 6-D Gaussian inside the unit box: thinned draws match its mean and sd."""
    mean = np.full(6, 0.5)
    sd = np.array([0.01, 0.02, 0.005, 0.03, 0.01, 0.02])
    corr = np.eye(6)
    corr[0, 1] = corr[1, 0] = 0.9
    prec = np.linalg.inv(corr * np.outer(sd, sd))

    def log_post(u):
        d = u - mean
        return -0.5 * np.einsum("ij,jk,ik->i", d, prec, d)

    rng = np.random.default_rng(1)
    start = mean + 3 * sd * rng.normal(size=(32, 6))
    res = rp.run_chain(log_post, start, 3000, seed=1)
    draws = rp.to_unit(rp.thin(res["chain"], res["tau"]))
    assert len(draws) > 500 and np.all(res["tau"] < 100)
    np.testing.assert_allclose(draws.mean(axis=0), mean, atol=0.3 * sd.max())
    np.testing.assert_allclose(draws.std(axis=0), sd, rtol=0.2)
    assert abs(np.corrcoef(draws[:, 0], draws[:, 1])[0, 1] - 0.9) < 0.1


def test_lost_walkers_are_moved_onto_the_ensemble():
    """rescue_lost moves walkers more than LOST_LOG_POST below the best onto other walkers, and leaves a healthy ensemble alone."""
    import emcee

    coords = np.random.default_rng(2).uniform(0.4, 0.6, size=(16, 6))
    lp = np.zeros(16)
    lp[3] = -5000.0

    def log_post(u):
        return np.zeros(len(u))

    state, moved = rp.rescue_lost(emcee.State(coords.copy(), log_prob=lp), log_post, np.random.default_rng(0))
    assert moved == 1 and np.min(np.abs(state.coords[3] - np.delete(coords, 3, axis=0)).max(axis=1)) < 1e-3
    healthy, none = rp.rescue_lost(emcee.State(coords.copy(), log_prob=np.zeros(16)), log_post, np.random.default_rng(0))
    assert none == 0 and np.array_equal(healthy.coords, coords)


def test_starting_walkers_are_inside_the_support_and_wider_than_the_draws():
    """starting_walkers: every start inside the ordered prior, spread about START_SPREAD times that of the draws."""
    theta, _, _ = _observation()
    draws = theta + np.random.default_rng(4).normal(size=(2000, 6)) * np.abs(theta) * 0.002
    start = rp.starting_walkers(draws, 64, np.random.default_rng(5))
    assert start.shape == (64, 6)
    from lif_sbi.priors import in_support

    assert in_support(rp.from_unit(start), kind="ordered").all()
    ratio = start.std(axis=0) / rp.to_unit(draws).std(axis=0)
    assert np.all((ratio > 2.0) & (ratio < 4.5))


def test_reference_posterior_of_a_step_observation_holds_the_truth_and_records_convergence():
    """reference_posterior on a real step observation: draws near the generating theta, every convergence record present; too short a chain is not accepted."""
    theta, cur, x = _observation()
    start = theta + np.random.default_rng(6).normal(size=(1000, 6)) * np.abs(theta) * 0.002
    res = rp.reference_posterior(x, cur, DT, SD, start, n_runs=2, n_walkers=32, n_steps=1200, n_draws=200, seed=0,
                                 c2st=lambda a, b: 0.5)
    assert res["draws"].shape == (200, 6)
    z = np.abs(res["draws"].mean(axis=0) - theta[0]) / res["draws"].std(axis=0)
    assert np.all(z < 6), z
    for key in ("rhat", "tau", "ess"):
        assert res[key].shape == (6,) and np.isfinite(res[key]).all()
    # 600 kept steps cannot be 50 autocorrelation times of this target: not a reference
    assert 0 <= res["walker_z"] and res["rhat_walkers"].shape == (6,)
    assert res["long_enough"] is False and res["accepted"] is False
    assert res["c2st_between_runs"] == 0.5


def _bench(*args):
    return subprocess.run([sys.executable, str(ROOT / "bench" / "reference_posteriors.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=300, env={"KERAS_BACKEND": "torch", **_env()})


def _env():
    import os

    return dict(os.environ)


def test_bench_refuses_a_folder_that_is_not_a_run_and_a_setup_without_an_exact_likelihood(tmp_path):
    """bench/reference_posteriors.py: one line and exit 2 for a non-run folder and for a run without noise, known current and the ordered prior."""
    proc = _bench(tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "expected a finished run folder" in proc.stderr
    (tmp_path / "config.toml").write_text((ROOT / "configs" / "default.toml").read_text())
    (tmp_path / "model.keras").write_bytes(b"not used")
    proc = _bench(tmp_path)
    assert proc.returncode == 2 and "has no exact likelihood" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.torch
def test_bench_runs_end_to_end_on_a_noisy_steps_run(noisy_steps_run, tmp_path):
    """bench/reference_posteriors.py at toy size on a trained noisy_steps run: every file written, the summary records each check."""
    import json

    out = tmp_path / "ref"
    proc = _bench(noisy_steps_run, "--n-obs", "1", "--runs", "2", "--walkers", "16", "--steps", "200", "--draws", "50", "--out", out)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for name in ("observations.npz", "draws.npz", "summary.json", "summary.md"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    (row,) = summary["observations"]
    assert row["accepted"] is False  # 100 kept steps are far too short: the checks say so
    assert 0.0 <= row["c2st_estimator"] <= 1.0 and 0.0 <= row["c2st_between_runs"] <= 1.0
    with np.load(out / "draws.npz") as f:
        assert f["reference"].shape == (1, 50, 6) and f["estimator"].shape == (1, 50, 6)


@pytest.mark.torch
def test_refined_bench_compares_refined_draws_with_the_references(noisy_steps_run, tmp_path):
    """bench/refined_posteriors.py on toy references of a trained noisy_steps run: refused (one line,
    exit 2) while no reference is accepted; with one accepted, refined.json and refined.md record
    both C2STs and the refinement's figures."""
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "ref"
    assert _bench(noisy_steps_run, "--n-obs", "1", "--runs", "2", "--walkers", "16", "--steps", "200", "--draws", "50",
                  "--out", out).returncode == 0

    def refined(*args):
        return subprocess.run([sys.executable, str(ROOT / "bench" / "refined_posteriors.py"), str(noisy_steps_run), "--refs", str(out),
                               *args], capture_output=True, text=True, timeout=600, env={**os.environ, "KERAS_BACKEND": "torch"})

    proc = refined()
    assert proc.returncode == 2 and "no reference was accepted" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    summary["observations"][0]["accepted"] = True  # the toy chain is too short to pass; the comparison is what is tested
    (out / "summary.json").write_text(json.dumps(summary))
    proc = refined("--n-proposal", "4000")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (row,) = json.loads((out / "refined.json").read_text())["observations"]
    assert 0.0 <= row["c2st_estimator"] <= 1.0 and 0.0 <= row["c2st_refined"] <= 1.0
    assert row["n_flow"] == 4000 and row["n_proposal"] == 4000 and row["rounds"] >= 2 and 0.9 < row["residual_ratio"] < 1.1
    assert "refined" in (out / "refined.md").read_text()
