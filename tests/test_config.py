"""Configurations: loading, overrides, and one-line errors for every kind of bad value."""

import subprocess
import sys
import tomllib

import numpy as np
import pytest
import torch

from lif_sbi.config import ConfigError, available_configs, from_dict, load_config, parse_override


def test_named_configs_load_and_round_trip(tmp_path):
    assert {"reference", "default", "ci"} <= set(available_configs())
    for name in available_configs():
        cfg = load_config(name)
        path = tmp_path / f"{name}.toml"
        path.write_text(cfg.to_toml())
        assert load_config(str(path)) == cfg


def test_reference_matches_the_study():
    cfg = load_config("reference")
    assert (cfg.data.n_traces, cfg.data.validation_fraction, cfg.data.seed) == (10_000, 0.2, 42)
    t = cfg.training
    assert (t.epochs, t.batch_size, t.learning_rate) == (100, 64, 1e-3)
    assert (t.early_stopping_patience, t.lr_plateau_patience, t.lr_plateau_factor, t.min_learning_rate) == (12, 6, 0.5, 1e-6)
    assert cfg.model.summary_network == "reference" and cfg.model.flow_depth == 6
    assert (cfg.model.flow_dropout, cfg.model.logit_bounds, t.lr_schedule) == (0.05, False, "plateau")
    assert (cfg.model.flow_base_df, t.calibrate_widths) == (0.0, False)  # the flow as trained, normal base
    assert cfg.model.flow_subnet == "mlp"  # BayesFlow's own coupling MLP
    assert (cfg.diagnostics.n_test, cfg.diagnostics.n_draws) == (400, 1000)


def test_overrides_apply_and_are_typed():
    cfg = load_config("ci", ["training.epochs=7", "training.learning_rate=5e-4", "model.summary_network=conv_gru"])
    assert cfg.training.epochs == 7 and cfg.training.learning_rate == 5e-4
    assert cfg.model.summary_network == "conv_gru"
    assert parse_override("data.cache=false") == {"data": {"cache": False}}


@pytest.mark.parametrize("text, value", [("true", True), ("false", False), ('"auto"', "auto"), ("auto", "auto")])
def test_jit_compile_values_and_round_trip(text, value):
    cfg = load_config("ci", [f"training.jit_compile={text}"])
    assert cfg.training.jit_compile == value and type(cfg.training.jit_compile) is type(value)
    assert load_config("ci").training.jit_compile == "auto"  # Keras' default
    again = from_dict(tomllib.loads(cfg.to_toml()))  # the resolved config.toml a run saves reads back the same
    assert again.training.jit_compile == value


@pytest.mark.parametrize("key", ["record_steps", "compile_steps"])
def test_step_recording_options_default_on_and_round_trip(key):
    # torch: recorded and replayed steps; on the CPU compiled by inductor once replayed often
    assert getattr(load_config("ci").training, key) is True
    cfg = load_config("ci", [f"training.{key}=false"])
    assert getattr(from_dict(tomllib.loads(cfg.to_toml())).training, key) is False


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["training.epochs=0"], "training.epochs"),
        (["training.epoch=3"], "unknown key 'training.epoch'"),
        (["trainig.epochs=3"], "unknown key 'trainig'"),
        (["training.epochs='ten'"], "training.epochs .* wrong type"),
        (["data.validation_fraction=1.5"], "data.validation_fraction"),
        (["data.validation_fraction=80"], "data.validation_fraction"),
        (["training.min_learning_rate=0.1"], "training.min_learning_rate"),
        (["model.summary_network=lstm"], "model.summary_network"),
        (["model.flow_dropout=1.0"], "model.flow_dropout"),
        (["model.flow_base_df=1.5"], "model.flow_base_df"),
        (["model.flow_subnet=resnet"], "model.flow_subnet .* mlp, fused"),
        (["training.calibrate_widths=1"], "training.calibrate_widths"),
        (["training.jit_compile=yes"], 'training.jit_compile .* true, false or "auto"'),
        (["training.jit_compile=1"], "training.jit_compile"),
        (["training.record_steps=1"], "training.record_steps .* wrong type: expected bool"),
        (["training.record_steps=auto"], "training.record_steps"),
        (["training.compile_steps=1"], "training.compile_steps .* wrong type: expected bool"),
        (["training.compile_steps=inductor"], "training.compile_steps"),
        (["model.logit_bounds=yes"], "model.logit_bounds"),
        (["model.summary_network=reference", "model.trace_features=true"], "model.trace_features .*conv_pool"),
        (["training.lr_schedule=linear"], "training.lr_schedule .* 'plateau' or 'cosine'"),
        (["data.device=gpu"], "data.device .* auto, cpu, cuda"),
        (["training.initial_weights=results/run/model.keras"], "training.initial_weights .*weights.npz"),
        (["training.initial_weights=3"], "training.initial_weights"),
        (["epochs"], "malformed"),
    ],
)
def test_bad_values_name_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config("ci", overrides)


def test_unknown_config_name():
    with pytest.raises(ConfigError, match="unknown configuration 'nope'.*reference"):
        load_config("nope")


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "lif_sbi.train", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize(
    "args, match",
    [
        (["--set", "training.epochs=-1"], "training.epochs"),
        (["--set", "training.batchsize=3"], "unknown key 'training.batchsize'"),
        (["--set", "training.epochs=1.5"], "wrong type"),
        (["--set", "data.validation_fraction=1.2"], "validation_fraction"),
        (["--set", "training.lr_schedule=step"], "training.lr_schedule"),
        (["--config", "nope"], "unknown configuration"),
        (["--resume", "/nonexistent/run"], "--resume"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_cli_errors_are_one_line_exit_2(args, match, tmp_path):
    proc = _cli(*args, "--results-dir", str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert __import__("re").search(match, lines[0]), lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("content", [None, "not numpy", "other model"])
def test_initial_weights_that_do_not_fit_are_one_line_exit_2(content, tmp_path):
    """A missing file, a file NumPy cannot read, and another model's weights: one line, exit 2, no run folder."""
    path = tmp_path / "initial.weights.npz"
    if content == "not numpy":
        path.write_text("not an archive")
    elif content == "other model":
        np.savez(path, np.zeros((3, 4), "float32"), np.zeros(4, "float32"))
    results = tmp_path / "results"
    proc = _cli("--config", "ci", "--set", f"training.initial_weights={path}", "--set", "data.cache=false", "--results-dir", str(results))
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"error: training.initial_weights = '{path}'"), lines[0]
    assert ("no such file" if content is None else "not initial weights of this model") in lines[0], lines[0]
    assert not results.exists() or list(results.iterdir()) == []  # nothing half-written


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_data_device_without_a_gpu_is_one_line_exit_2(tmp_path):
    proc = _cli("--config", "ci", "--set", "data.device=cuda", "--results-dir", str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "data.device = 'cuda'" in lines[0] and "no CUDA device" in lines[0] and "'auto' or 'cpu'" in lines[0], lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_resume_of_a_complete_run_is_refused(tmp_path):
    run = tmp_path / "ci_torch_x"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.toml").write_text(load_config("ci").to_toml())
    (run / "report.md").write_text("# done\n")
    proc = _cli("--resume", str(run))
    assert proc.returncode == 2 and "complete" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert (run / "report.md").read_text() == "# done\n"


def test_bad_toml_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[training\nepochs = 3\n")
    proc = _cli("--config", str(bad), "--results-dir", str(tmp_path / "r"))
    assert proc.returncode == 2 and "not valid TOML" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
