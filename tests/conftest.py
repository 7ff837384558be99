"""Shared pytest set-up: the `slow` opt-in, the `gpu` auto-skip and simulator fixtures."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

SLOW_ENV = "LIF_SBI_SLOW"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help=f"run tests marked slow (or set {SLOW_ENV}=1)")


def _slow_enabled(config) -> bool:
    return config.getoption("--runslow") or os.environ.get(SLOW_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def pytest_collection_modifyitems(config, items):
    skip_slow = pytest.mark.skip(reason=f"slow: run with --runslow or {SLOW_ENV}=1")
    skip_gpu = pytest.mark.skip(reason="gpu: torch.cuda.is_available() is False")
    run_slow = _slow_enabled(config)
    has_gpu = torch.cuda.is_available()
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)


# --------------------------------------------------------------------------------------------
# simulator helpers shared by test_simulator.py and test_dataset.py


def spike_times(v: np.ndarray, v_res: np.ndarray, n_ref: np.ndarray) -> list[np.ndarray]:
    """Spike sample indices per trace: the samples where V was set to V_res after a crossing.

    v: (N, T); v_res: (N,) in v's dtype; n_ref: (N,) clamped samples after each spike. A spike
    sample and its clamp form a run of V == V_res; a run of length L starting at s holds the
    spikes s, s + (n_ref + 1), ... < s + L (a spike on the first sample after a clamp merges
    two runs). An integrated sample equal to V_res bit for bit has probability zero.
    """
    out = []
    for row, r, k in zip(v, v_res, n_ref):
        at = np.concatenate(([False], row == r, [False]))
        edges = np.flatnonzero(np.diff(at.astype(np.int8)))
        starts, ends = edges[::2], edges[1::2]
        out.append(np.concatenate([np.arange(s, e, k + 1) for s, e in zip(starts, ends)] or [np.empty(0, np.int64)]))
    return out


@pytest.fixture(scope="session")
def random_cases():
    """2,000 (theta, current) pairs from the prior and the stimulus, with the reference traces.

    Returns dict: theta (N, 6) float64, current (N, 501) float64 A, v_ref (N, 501) float64 V.
    """
    from lif_sbi.priors import sample_prior
    from lif_sbi.simulator import simulate_reference
    from lif_sbi.stimulus import sample_current

    n = 2000
    theta = sample_prior(n, np.random.default_rng(20241125))
    current, _, _ = sample_current(n, torch.Generator().manual_seed(20241125))
    current = current.numpy()
    return {"theta": theta, "current": current, "v_ref": simulate_reference(theta, current)}


# --------------------------------------------------------------------------------------------
# a small trained run of a known-current, noisy set-up, shared by test_train, test_infer and
# test_reference_posterior


@pytest.fixture(scope="session")
def noisy_steps_run(tmp_path_factory):
    """A finished `noisy_steps` run at smoke size (320 traces, 1 epoch) under torch: its folder."""
    import subprocess
    import sys

    tmp = tmp_path_factory.mktemp("noisy_steps")
    cmd = [sys.executable, "-m", "lif_sbi.train", "--config", "noisy_steps", "--results-dir", str(tmp / "results"), "--quiet",
           "--set", "data.n_traces=320", "--set", "training.epochs=1", "--set", "diagnostics.n_test=24",
           "--set", "diagnostics.n_draws=60", "--set", "diagnostics.n_ppc=2",
           "--set", "diagnostics.validity_traces=100"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "KERAS_BACKEND": "torch", "LIF_SBI_CACHE": str(tmp / "cache")})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = (tmp / "results").iterdir()
    return run_dir


@pytest.fixture(autouse=True)
def _reference_prior_box():
    """Every test starts and ends with the reference prior box (a run with widened bounds sets the
    process's box: `priors.set_box`)."""
    from lif_sbi import priors

    priors.set_box()
    yield
    priors.set_box()
