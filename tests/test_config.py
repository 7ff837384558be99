"""Configurations: loading, overrides, and one-line errors for every kind of bad value."""

import subprocess
import sys
import tomllib

import numpy as np
import pytest
import torch

from lif_sbi.config import ConfigError, NoiseConfig, PriorConfig, StimulusConfig, available_configs, from_dict, load_config, parse_override


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
        (["model.logit_margin=0.6"], r"model.logit_margin = 0.6 is not allowed: expected a number in \[1e-05, 0.5\]"),
        (["model.logit_margin=0.0"], r"model.logit_margin .* \[1e-05, 0.5\]"),
        (["model.logit_margin='small'"], "model.logit_margin = 'small' has the wrong type: expected float"),
        (["model.summary_network=reference", "model.trace_features=true"], "model.trace_features .*conv_pool"),
        (["training.lr_schedule=linear"], "training.lr_schedule .* 'plateau' or 'cosine'"),
        (["data.device=gpu"], "data.device .* auto, cpu, cuda"),
        (["data.mode=streaming"], "data.mode = 'streaming' is not allowed: expected one of offline, online"),
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
        (["--set", "training.batchsize=3"], "unknown key 'training.batchsize' in --set 'training.batchsize=3'"),
        (["--set", "trainings.epochs=3"], "unknown key 'trainings' in --set"),
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


# ---------------------------------------------------------------------------------------------
# [stimulus], [noise], [prior] and model.observe_current


def test_known_current_config():
    """configs/known_current.toml: the reference stimulus, no noise, the reference prior, and the current observed."""
    cfg = load_config("known_current")
    assert cfg.model.observe_current is True and cfg.model.summary_network == "conv_pool"
    assert cfg.stimulus == StimulusConfig() and cfg.stimulus.protocols == ("coloured",) and cfg.stimulus.n_samples == 501
    assert cfg.noise == NoiseConfig() and cfg.noise.sd_v == 0.0
    assert cfg.prior == PriorConfig() and cfg.prior.kind == "reference"
    assert load_config("default").model.observe_current is False  # off unless asked for


def test_noisy_steps_config():
    """configs/noisy_steps.toml: steps of 0.3-3 nA from 5-15 ms for 20-35 ms on 50 ms at 0.1 ms, 0.5 mV noise, "ordered" prior."""
    cfg = load_config("noisy_steps")
    s = cfg.stimulus
    assert s.protocols == ("step",) and isinstance(s.protocols, tuple)
    assert (s.duration_s, s.dt_s, s.n_samples) == (0.05, 1e-4, 501)
    assert (s.amplitude_low_a, s.amplitude_high_a) == (0.3e-9, 3e-9)
    assert (s.onset_low_s, s.onset_high_s, s.width_low_s, s.width_high_s) == (0.005, 0.015, 0.02, 0.035)
    assert cfg.noise.sd_v == 0.5e-3 and cfg.prior.kind == "ordered"
    assert cfg.model.observe_current is True and cfg.training.calibrate_widths is False
    assert cfg.model.leak_scales == 3 and cfg.model.spike_features is True


@pytest.mark.parametrize("duration, dt, n", [(0.05, 1e-4, 501), (0.5, 1e-4, 5001), (0.05, 5e-5, 1001), (1.0, 1e-3, 1001), (0.003, 1e-4, 31)])
def test_stimulus_n_samples(duration, dt, n):
    """StimulusConfig.n_samples = round(duration_s / dt_s) + 1 for the reference and other grids."""
    assert StimulusConfig(duration_s=duration, dt_s=dt).n_samples == n


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["noise.sd_v=-1e-3"], r"noise.sd_v = -0.001 is not allowed: expected a standard deviation in \[0, 0.05\] V"),
        (["noise.sd_v=0.1"], r"noise.sd_v .* \[0, 0.05\] V"),
        (['noise.sd_v="0.5e-3"'], "noise.sd_v .* wrong type: expected float"),
        (['stimulus.protocols=["sine"]'], r"stimulus.protocols = \['sine'\] is not allowed: expected a list of distinct names from coloured, step, ramp, file"),
        (['stimulus.protocols=["step", "sine"]'], "stimulus.protocols .* coloured, step, ramp, file"),
        (["stimulus.protocols=[]"], r"stimulus.protocols = \[\] is not allowed: expected a list of distinct names"),
        (['stimulus.protocols=["step", "step"]'], "stimulus.protocols .* distinct"),
        (["stimulus.protocols=step"], "stimulus.protocols = 'step' has the wrong type: expected a list of strings"),
        (["stimulus.protocols=[1, 2]"], "stimulus.protocols .* wrong type: expected a list of strings"),
        (["stimulus.duration_s=1e-4"], r"stimulus.duration_s = 0.0001 is not allowed: expected a window of at least 10 steps"),
        (["stimulus.duration_s=0.0"], "stimulus.duration_s .* at least 10 steps"),
        (["stimulus.duration_s=1000.0"], "stimulus.duration_s .* at most 100 s"),
        (["stimulus.dt_s=0.0"], r"stimulus.dt_s = 0.0 is not allowed: expected a step in \[1e-6, 1e-2\] s"),
        (["stimulus.dt_s=-1e-4"], "stimulus.dt_s"),
        (["stimulus.amplitude_low_a=5e-9"], r"stimulus.amplitude_low_a = 5e-09 is not allowed: expected a number <= stimulus.amplitude_high_a \(3e-09\)"),
        (["stimulus.onset_low_s=0.02"], r"stimulus.onset_low_s .* <= stimulus.onset_high_s \(0.01\)"),
        (["stimulus.width_high_s=0.01"], r"stimulus.width_low_s .* <= stimulus.width_high_s \(0.01\)"),
        (["stimulus.file_scale_low=2.0"], r"stimulus.file_scale_low .* <= stimulus.file_scale_high \(1.0\)"),
        (["stimulus.onset_low_s=-0.001"], "stimulus.onset_low_s / width_low_s .* onsets >= 0 s and widths > 0 s"),
        (["stimulus.width_low_s=0.0"], "stimulus.onset_low_s / width_low_s .* widths > 0 s"),
        (['stimulus.protocols=["file"]'], "stimulus.file = '' is not allowed: expected an existing .abf, .npy, .csv or .txt file"),
        (["stimulus.file_sweep=-1"], "stimulus.file_sweep .* a non-negative integer"),
        (["stimulus.file_dt_s=-1e-4"], "stimulus.file_dt_s"),
        (["stimulus.file_start_s=-0.1"], "stimulus.file_start_s .* a time >= 0 s"),
        (["prior.kind=uniform"], "prior.kind = 'uniform' is not allowed: expected one of reference, ordered"),
        (["model.observe_current=1"], "model.observe_current = 1 has the wrong type: expected bool"),
        (["stimulus.protocol=step"], r"unknown key 'stimulus.protocol' in .*: allowed keys in \[stimulus\] are protocols, duration_s, dt_s"),
        (["stimulus.amplitude_low=1e-9"], r"unknown key 'stimulus.amplitude_low' .* amplitude_low_a"),
        (["noise.sd=1e-3"], r"unknown key 'noise.sd' in .*: allowed keys in \[noise\] are sd_v$"),
        (["prior.type=ordered"], r"unknown key 'prior.type' in .*: allowed keys in \[prior\] are kind, C_m, g_L, E_L, V_th, V_res, t_ref$"),
        (["prior.E_L=[-30.0, -40.0]"], r"prior.E_L = \[-30.0, -40.0\] is not allowed: expected \[low, high\] in display units with low < high"),
        (["prior.C_m=[0.0, 10.0]"], r"prior.C_m .* low > 0"),
        (["prior.g_L=[1.0, 2.0, 3.0]"], r"prior.g_L"),
        (["prior.V_th=['a', 'b']"], r"prior.V_th .* expected a list of numbers"),
        (["model.observe_currents=true"], r"unknown key 'model.observe_currents' .* observe_current"),
    ],
)
def test_bad_stimulus_noise_and_prior_values_name_the_key(overrides, match):
    """Bad values and unknown keys in [stimulus], [noise], [prior] and model.observe_current raise ConfigError naming the key and what is allowed."""
    with pytest.raises(ConfigError, match=match):
        load_config("ci", overrides)


@pytest.mark.parametrize("duration, dt", [(0.05005, 1e-4), (0.0501, 2e-4)])
def test_duration_not_a_multiple_of_dt_is_refused(duration, dt):
    """stimulus.duration_s must be a whole number of stimulus.dt_s steps; another value is a ConfigError naming both."""
    with pytest.raises(ConfigError, match="stimulus.duration_s .*dt_s"):
        load_config("ci", [f"stimulus.duration_s={duration}", f"stimulus.dt_s={dt}"])


def test_whole_step_durations_are_accepted_despite_float_rounding():
    """Durations that are whole steps only up to float rounding (0.05 / 1e-4 = 499.99...) load, with the exact sample count."""
    for duration, dt, n in ((0.05, 1e-4, 501), (0.3, 1e-4, 3001), (0.07, 1e-5, 7001), (0.0123, 1e-4, 124)):
        cfg = load_config("ci", [f"stimulus.duration_s={duration}", f"stimulus.dt_s={dt}"])
        assert cfg.stimulus.n_samples == n


def test_config_with_a_protocol_list_round_trips_through_the_saved_toml(tmp_path):
    """A config with several protocols, a waveform file, noise and the "ordered" prior reads back equal from its to_toml()."""
    wave = tmp_path / 'my "wave".npy'  # a quote in the path: escaped in TOML
    np.save(wave, np.zeros(1000))
    cfg = load_config("noisy_steps", ['stimulus.protocols=["step", "ramp", "file", "coloured"]', f"stimulus.file={str(wave)!r}",
                                      "stimulus.file_scale_high=2.5", "stimulus.duration_s=0.02", "stimulus.dt_s=5e-5",
                                      "noise.sd_v=1.5e-3", "prior.kind=ordered", "model.observe_current=false",
                                      "model.leak_features=false", "model.leak_scales=1", "model.spike_features=false"])
    assert cfg.stimulus.protocols == ("step", "ramp", "file", "coloured") and cfg.stimulus.file == str(wave)
    text = cfg.to_toml()
    assert 'protocols = ["step", "ramp", "file", "coloured"]' in text
    assert "[stimulus]" in text and "[noise]" in text and "[prior]" in text
    again = from_dict(tomllib.loads(text))
    assert again == cfg and isinstance(again.stimulus.protocols, tuple)
    path = tmp_path / "saved.toml"
    path.write_text(text)
    assert load_config(str(path)) == cfg
    assert (again.noise.sd_v, again.prior.kind, again.model.observe_current, again.stimulus.n_samples) == (1.5e-3, "ordered", False, 401)
