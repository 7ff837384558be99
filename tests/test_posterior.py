"""lif_sbi.load: a finished run as a posterior object (sample, log_prob, names, units, bounds)."""

import subprocess
import sys

import numpy as np
import pytest

import lif_sbi
from lif_sbi.errors import InputError
from lif_sbi.posterior import finished_run
from lif_sbi.priors import HIGH, LOW
from lif_sbi.simulator import simulate_batch

# the "ordered" prior's support (V_res <= E_L - 2 mV inside the box) is this share of the box's volume
ORDERED_SHARE = (50 + 30) / 150


@pytest.fixture(scope="module")
def posterior(noisy_steps_run):
    return lif_sbi.load(noisy_steps_run)


@pytest.mark.torch
def test_names_units_bounds_and_draws(posterior):
    assert posterior.parameter_names == ("C_m", "g_L", "E_L", "V_th", "V_res", "t_ref")
    assert posterior.units == ("F", "S", "V", "V", "V", "s") and posterior.display_units[0] == "pF"
    np.testing.assert_array_equal(posterior.bounds, np.stack([LOW, HIGH], axis=1))
    d = simulate_batch(3, seed=4, stimulus=posterior.config.stimulus, prior=posterior.prior)
    draws = posterior.sample(d["observables"][:, :, 0], 50, current=d["current"])
    assert draws.shape == (3, 50, 6) and ((draws >= LOW) & (draws <= HIGH)).all()
    with pytest.raises(ValueError, match="observes the injected current"):
        posterior.sample(d["observables"][:, :, 0], 10)
    with pytest.raises(ValueError, match=r"\(N, 501\)"):
        posterior.sample(np.zeros((1, 400)), 10, current=np.zeros((1, 400)))


@pytest.mark.torch
def test_log_prob_is_a_normalised_density_in_si_units(posterior):
    """For q normalised on the prior's support S and draws confined to S (acceptance a):
    E[1 / q(theta)] over the confined draws = vol(S) / a. Checks units (SI volume) and normalisation."""
    from lif_sbi import estimator

    d = simulate_batch(1, seed=6, stimulus=posterior.config.stimulus, prior=posterior.prior)
    v, cur = d["observables"][:, :, 0], d["current"]
    draws, acc = estimator.sample_posterior(posterior.approximator, v, 4000, seed=2, current=cur, prior=posterior.prior,
                                            return_acceptance=True)
    lp = posterior.log_prob(draws[0], v[0], current=cur[0])
    assert lp.shape == (4000,) and np.isfinite(lp).all()
    log_volume = np.log(np.prod(HIGH - LOW) * ORDERED_SHARE)
    ratio = np.mean(np.exp(-lp - log_volume)) * acc[0]
    assert 0.8 < ratio < 1.2, ratio
    outside = draws[0, :2].copy()
    outside[:, 0] = 2 * HIGH[0]
    assert np.isneginf(posterior.log_prob(outside, v[0], current=cur[0])).all()


def test_a_folder_that_is_not_a_finished_run(tmp_path):
    with pytest.raises(InputError, match="no such run folder"):
        finished_run(tmp_path / "nope")
    (tmp_path / "model.keras").write_bytes(b"x")
    with pytest.raises(InputError, match=r"not a finished run \(no config.toml, report.md"):
        finished_run(tmp_path)
    with pytest.raises(InputError, match="arguments swapped"):
        (tmp_path / "trace.csv").write_text("1\n")
        finished_run(tmp_path / "trace.csv")


def test_importing_the_package_loads_no_keras():
    code = "import sys, lif_sbi; assert callable(lif_sbi.load); assert 'keras' not in sys.modules and 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.torch
def test_the_python_route_prints_no_library_noise(noisy_steps_run):
    """lif_sbi.load + sample in a fresh process, KERAS_BACKEND unset: nothing on stdout or stderr but
    ours (the smoke run's flow may warn, in lif_sbi's own words, of draws outside the prior)."""
    import os

    code = ("import numpy as np, lif_sbi\n"
            f"p = lif_sbi.load({str(noisy_steps_run)!r})\n"
            "d = p.sample(np.full((1, p.n_samples), -0.07) + np.random.default_rng(0).normal(0, 5e-4, (1, p.n_samples)), 20,\n"
            "             current=np.zeros((1, p.n_samples)))\n"
            "print('draws', d.shape)\n")
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    ours = [line for line in proc.stderr.splitlines() if "/lif_sbi/" in line and "UserWarning" in line]
    others = [line for line in proc.stderr.splitlines() if line not in ours and not line.startswith("  warnings.warn(")]
    assert proc.returncode == 0 and proc.stdout == "draws (1, 20, 6)\n" and not others, proc.stdout + proc.stderr
