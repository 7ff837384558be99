"""`python -m lif_sbi.train` end to end under each Keras backend, and kill/resume."""

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SMALL = ["--set", "data.n_traces=320", "--set", "diagnostics.n_test=24", "--set", "diagnostics.n_draws=60"]
RECORD = ["config.toml", "environment.json", "initial.weights.npz", "model.keras", "calibration.json", "history.csv", "metrics.json", "report.md", "timings.json"]
PLOTS = ["loss.png", "recovery.png", "sbc_ecdf.png", "z_score_contraction.png", "coverage.png", "prior_histograms.png",
         "example_traces.png", "posterior_predictive.png"]


def _env(backend, tmp_path):
    return {**os.environ, "KERAS_BACKEND": backend, "LIF_SBI_CACHE": str(tmp_path / "cache")}


def _train(backend, tmp_path, *args, timeout=900):
    cmd = [sys.executable, "-m", "lif_sbi.train", "--config", "ci", "--results-dir", str(tmp_path / "results"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(backend, tmp_path), timeout=timeout)


def _history(run_dir):
    with open(run_dir / "history.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("torch", marks=pytest.mark.torch),
        # slow: 90 s; the parity tests' fixture trains ci under TensorFlow end to end twice
        pytest.param("tensorflow", marks=[pytest.mark.tensorflow, pytest.mark.slow,
                                          pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="tensorflow not installed")]),
        pytest.param("jax", marks=[pytest.mark.jax, pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax not installed")]),
    ],
)
def test_ci_config_trains_end_to_end(backend, tmp_path):
    proc = _train(backend, tmp_path, *SMALL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # TensorFlow's C++ start-up lines (loaded as the backend, or by Keras' gfile probe at the first
    # save even under torch) must not reach the console (lif_sbi.quiet).
    assert "oneDNN" not in proc.stderr and "absl::" not in proc.stderr and "cuInit" not in proc.stderr, proc.stderr[-2000:]
    # BayesFlow's per-call tqdm bars ("Summarizing", "Sampling") are switched off (TQDM_DISABLE).
    assert "Sampling:" not in proc.stderr and "Summarizing:" not in proc.stderr, proc.stderr[-2000:]
    (run_dir,) = (tmp_path / "results").iterdir()
    assert run_dir.name.startswith(f"ci_{backend}_")
    for name in RECORD:
        assert (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0, name
    for name in PLOTS:
        assert (run_dir / "plots" / name).stat().st_size > 1000, name
    assert not list(run_dir.rglob("*.tmp*")), "temporary files left behind"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for name, m in metrics["parameters"].items():
        for key in ("rmse", "coverage_50", "coverage_90", "contraction", "log_gamma"):
            assert m[key] is not None and abs(m[key]) < 1e6, (name, key, m[key])
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["keras_backend"] == backend and env["bayesflow"] and env["device"]
    # data.device "auto" is saved resolved; the dataset went to the cache (data.cache = true)
    assert 'device = "cpu"' in (run_dir / "config.toml").read_text() or env["device"] != "CPU"
    assert len(list((tmp_path / "cache").glob("lif_320_*.npz"))) == 1
    assert "simulated on CPU" in proc.stdout or env["device"] != "CPU", proc.stdout[-2000:]
    # training.jit_compile = "auto" is Keras' choice: eager under torch and (on a CPU) TensorFlow, jitted under JAX
    assert metrics["jit_compile"] is (backend == "jax")
    # training.record_steps: under torch each batch shape's step is recorded once and replayed (a
    # traced aten program on the CPU: ci's conv_pool network has no GRU), and on the CPU Adam
    # updates flat buffers; the others compile theirs
    if backend == "torch":
        assert "recorded once per batch shape" in metrics["training_step"] and " recorded)" in metrics["training_step"], metrics["training_step"]
        assert ("traced aten programs" if env["device"] == "CPU" else "CUDA graphs") in metrics["training_step"]
        assert metrics["training_step"].endswith("; Adam on flat buffers") == (env["device"] == "CPU"), metrics["training_step"]
    else:
        assert metrics["training_step"] == ("compiled (jit_compile)" if backend == "jax" else "eager")
    rows = _history(run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert all(float(r["learning_rate"]) > 0 and float(r["wall_s"]) > 0 for r in rows)
    report = (run_dir / "report.md").read_text()
    for name in PLOTS:
        assert f"plots/{name}" in report

    # The saved model loads back in a fresh process and samples.
    script = (
        "import numpy as np, lif_sbi.estimator as e, lif_sbi.simulator as s\n"
        f"a = e.load_approximator({str(run_dir / 'model.keras')!r})\n"
        "d = s.simulate_batch(3, seed=1)\n"
        "x = e.sample_posterior(a, d['observables'], 20, seed=0)\n"
        "assert x.shape == (3, 20, 6) and np.isfinite(x).all(), x.shape\n"
        "print('ok')\n"
    )
    load = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(backend, tmp_path), timeout=300)
    assert load.returncode == 0 and "ok" in load.stdout, load.stderr[-3000:]

    # A second run never overwrites the first.
    proc2 = _train(backend, tmp_path, *SMALL, "--set", "training.epochs=1", "--quiet")
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    assert len(list((tmp_path / "results").iterdir())) == 2


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.parametrize("summary", ["conv_pool", "conv_gru"])
def test_ci_trains_with_a_compiled_step_under_torch(tmp_path, summary):
    """training.jit_compile = true: Keras' fit runs torch.compile'd train and validation steps
    (about 2 min of compilation per network on a 2-core CPU); the run completes and records the
    choice. conv_gru's GRUs run as the opaque lif_sbi::gru op, with dropout, in both steps."""
    proc = _train("torch", tmp_path, *SMALL, "--set", "training.jit_compile=true", "--set", f"model.summary_network={summary}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "(training step: compiled (jit_compile))" in proc.stdout
    assert "Dynamo detected" not in proc.stderr, proc.stderr[-2000:]
    (run_dir,) = (tmp_path / "results").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["jit_compile"] is True
    assert all(float(r["loss"]) < 1e6 for r in _history(run_dir))
    assert 'jit_compile = true' in (run_dir / "config.toml").read_text()


@pytest.mark.slow  # 80 s; parity's test_every_backend_trains_from_the_first_ones_initial_weights covers the same start
@pytest.mark.torch
@pytest.mark.tensorflow
@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="tensorflow not installed")
def test_initial_weights_start_tensorflow_where_torch_started(tmp_path):
    """training.initial_weights: a TensorFlow run from the weights a torch run started from holds
    the same initial weights, and with the same data, batch order and seed it trains the same way:
    after an epoch its weights differ from torch's by float32 drift (measured on the 2-core CPU:
    median per-array relative difference 6e-5), not by a different start (each backend's own
    random initialisation: 1.4)."""
    import numpy as np

    args = (*SMALL, "--set", "training.epochs=1", "--set", "model.flow_dropout=0.0", "--quiet")  # dropout masks are per backend
    first = _train("torch", tmp_path, *args)
    assert first.returncode == 0, first.stderr[-3000:]
    (torch_run,) = (tmp_path / "results").iterdir()
    start = torch_run / "initial.weights.npz"
    second = _train("tensorflow", tmp_path, *args, "--set", f"training.initial_weights={start}")
    assert second.returncode == 0, second.stderr[-3000:]
    (tf_run,) = [p for p in (tmp_path / "results").iterdir() if p != torch_run]
    with np.load(start) as a, np.load(tf_run / "initial.weights.npz") as b:
        assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
    assert f'initial_weights = "{start}"' in (tf_run / "config.toml").read_text()
    with np.load(torch_run / "checkpoints" / "best.weights.npz") as a, np.load(tf_run / "checkpoints" / "best.weights.npz") as b:
        rel = [np.linalg.norm(a[k] - b[k]) / np.linalg.norm(a[k]) for k in a.files if np.linalg.norm(a[k]) > 0]
    assert np.median(rel) <= 1e-3, np.median(rel)


@pytest.mark.slow  # 90 s: two trainings
@pytest.mark.torch
def test_data_cache_false_writes_no_dataset_and_a_second_run_loads_a_cached_one(tmp_path):
    proc = _train("torch", tmp_path, *SMALL, "--set", "training.epochs=1", "--set", "data.cache=false")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("*.npz"))
    assert "not cached (data.cache = false)" in proc.stdout, proc.stdout[-2000:]
    for expected in ("saved to", "loaded from"):
        proc = _train("torch", tmp_path, *SMALL, "--set", "training.epochs=1")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert expected in proc.stdout, (expected, proc.stdout[-2000:])
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    reports = sorted((tmp_path / "results").glob("*/report.md"))
    assert len(reports) == 3 and "loaded from the cache" in reports[-1].read_text()


def test_validation_batches_are_whole_where_a_close_batch_size_allows():
    """No partial last validation batch (one more shape to compile) where a batch size of at least
    half the training batch divides the validation set; else the training batch size."""
    from lif_sbi.runner import validation_batch_size

    assert validation_batch_size(2000, 64) == 50  # default and reference: 40 batches of 50
    assert validation_batch_size(128, 64) == 64  # ci: already whole
    assert validation_batch_size(150, 64) == 50
    assert validation_batch_size(1999, 64) == 64  # a prime: no close divisor, one partial batch
    assert validation_batch_size(24, 64) == 24  # one batch
    assert validation_batch_size(1, 64) == 1


@pytest.mark.torch
def test_noisy_steps_trains_end_to_end_with_the_current_noise_and_prior_it_configures(noisy_steps_run):
    """noisy_steps at smoke size: the saved config keeps its stimulus, noise and prior; no width calibration; the report names the data and the spike-time check."""
    run_dir = noisy_steps_run
    saved = (run_dir / "config.toml").read_text()
    assert 'protocols = ["step"]' in saved and "sd_v = 0.0005" in saved and 'kind = "ordered"' in saved and "observe_current = true" in saved
    assert not (run_dir / "calibration.json").exists()
    for name in PLOTS:
        assert (run_dir / "plots" / name).stat().st_size > 1000, name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    spikes = metrics["spike_times"]
    assert 0 <= spikes["spikes_inside"] <= spikes["spikes_observed"] and spikes["n_traces"] > 0, spikes
    report = (run_dir / "report.md").read_text()
    assert "## Spike times" in report and "0.5 mV" in report and "ordered" in report and "step" in report
