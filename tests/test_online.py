"""Online training data (lif_sbi/online.py): a fresh batch per step, a function of (seed, epoch, batch), and `data.mode = "online"` end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lif_sbi import priors
from lif_sbi.config import StimulusConfig
from lif_sbi.noise import FreshNoise
from lif_sbi.online import OnlineBatches

from backend_scripts import BACKENDS

KEYS = ("parameters", "observables", "current")


def _batches(seed=3, **kw):
    kw = {"stimulus": None, "prior": "reference", **kw}
    return OnlineBatches(100, 32, None, seed=seed, keys=KEYS, **kw)


def test_a_batch_is_a_function_of_seed_epoch_and_index_not_of_fetch_order():
    a, b = _batches(), _batches()
    b[2]  # fetched out of order first: changes nothing
    for item in (0, 1, 2):
        x, y = a[item], b[item]
        for k in KEYS:
            np.testing.assert_array_equal(x[k], y[k])
    assert len(a) == 4 and a[0]["observables"].shape == (32, 501, 1) and set(a[0]) == set(KEYS)
    assert not np.array_equal(a[0]["parameters"], a[1]["parameters"])  # every step new traces
    a.set_epoch(1)
    assert not np.array_equal(a[0]["parameters"], b[0]["parameters"])  # every epoch new traces
    assert not np.array_equal(_batches(seed=4)[0]["parameters"], b[0]["parameters"])


def test_batches_follow_the_configured_prior_stimulus_and_noise():
    stim = StimulusConfig(protocols=("step",), duration_s=0.02, dt_s=2e-4)
    ds = _batches(stimulus=stim, prior="ordered", noise=FreshNoise(0.5e-3, seed=11))
    batch = ds[1]
    theta = batch["parameters"]
    e, r = priors.INDEX["E_L"], priors.INDEX["V_res"]
    assert (theta[:, r] <= theta[:, e] - priors.V_RES_SHIFT_V + 1e-7).all()  # the ordered prior
    assert batch["current"].shape == (32, 101) and (batch["current"][:, 0] == 0).all()  # a step after its onset
    clean = ds.raw(0, 1)["observables"]
    resid = (batch["observables"] - clean).ravel()
    assert abs(resid.std() - 0.5e-3) < 0.05e-3 and abs(resid.mean()) < 0.05e-3
    np.testing.assert_array_equal(ds[1]["observables"], batch["observables"])  # the same noise for the same step


def _online_run(tmp_path, backend: str, name: str) -> tuple[str, list[str]]:
    """A ci-size online run under `backend`: (its stdout, its history rows)."""
    env = {**os.environ, "KERAS_BACKEND": backend, "LIF_SBI_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "lif_sbi.train", "--config", "ci", "--results-dir", str(tmp_path / name), "--set", "data.mode=online",
           "--set", "data.n_traces=320", "--set", "diagnostics.n_test=24", "--set", "diagnostics.n_draws=60"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = (tmp_path / name).iterdir()
    assert 'mode = "online"' in (run_dir / "config.toml").read_text()
    assert len(json.loads((run_dir / "metrics.json").read_text())["parameters"]) == 6
    return proc.stdout, (run_dir / "history.csv").read_text().splitlines()[1:]


@pytest.mark.torch
def test_online_ci_run_trains_end_to_end(tmp_path):
    """`data.mode = "online"` under torch: the whole pipeline, its record saying so, and a second
    run with the same seed giving the same losses (the batches are a function of the seed)."""
    out, rows_a = _online_run(tmp_path, "torch", "a")
    assert "data: online, a freshly simulated batch of 64 per step (4 steps an epoch); the 80 validation traces stay fixed" in out
    _, rows_b = _online_run(tmp_path, "torch", "b")
    assert [row.split(",")[:3] for row in rows_a] == [row.split(",")[:3] for row in rows_b]


@pytest.mark.slow
@pytest.mark.parametrize("backend", [p for p in BACKENDS if p.values[0] != "torch"])
def test_online_ci_run_trains_under_every_backend(tmp_path, backend):
    """The same online run under TensorFlow and JAX: BayesFlow's online dataset is a Keras PyDataset."""
    _, rows = _online_run(tmp_path, backend, "a")
    assert len(rows) == 3
