"""Offline datasets: reproducibility, the on-disk cache and its key, the train/validation split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lif_sbi import dataset
from lif_sbi.config import StimulusConfig
from lif_sbi.dataset import KEYS, dataset_key, load_or_simulate, simulate_dataset, split
from lif_sbi.priors import INDEX
from lif_sbi.simulator import simulate_batch


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 100 traces, so a few hundred traces exercise the multi-chunk seeding."""
    monkeypatch.setattr(dataset, "CHUNK", 100)


def assert_same(a, b):
    assert set(a) == set(b) == set(KEYS)
    for k in KEYS:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        assert a[k].tobytes() == b[k].tobytes(), k


def test_same_seed_same_arrays_different_seed_different(small_chunks):
    a = simulate_dataset(250, 42, progress=False)
    assert_same(a, simulate_dataset(250, 42, progress=False))
    b = simulate_dataset(250, 43, progress=False)
    for k in KEYS:
        assert not np.array_equal(a[k], b[k]), k
    assert a["parameters"].shape == (250, 6) and a["observables"].shape == (250, 501, 1)
    # chunks are independent streams: no chunk repeats another
    p = a["parameters"]
    assert not np.array_equal(p[:50], p[100:150]) and not np.array_equal(p[100:150], p[200:250])
    # whole chunks do not depend on n (chunk seeds depend on the chunk index only); the last,
    # partial chunk does (its stimulus draws follow its n prior draws in the same stream)
    bigger = simulate_dataset(300, 42, progress=False)
    assert_same({k: v[:200] for k, v in bigger.items()}, {k: v[:200] for k, v in a.items()})
    assert not np.array_equal(bigger["observables"][200:250], a["observables"][200:250])


def test_chunk_is_simulate_batch():
    a = simulate_dataset(120, 5, progress=False)
    seed = int(np.random.SeedSequence(5).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
    assert_same(a, simulate_batch(120, seed))


def test_cache_second_call_loads(tmp_path, monkeypatch, small_chunks):
    data, path, loaded = load_or_simulate(150, 7, cache_dir=tmp_path, progress=False)
    assert not loaded
    assert path is not None and path.exists() and path.parent == tmp_path
    assert path.name.startswith("lif_150_7_") and dataset_key(150, 7) in path.name

    def must_not_simulate(*a, **k):
        raise AssertionError("simulated although the cache holds the dataset")

    monkeypatch.setattr(dataset, "simulate_dataset", must_not_simulate)
    again, path2, loaded = load_or_simulate(150, 7, cache_dir=tmp_path, progress=False)
    assert path2 == path and loaded
    assert_same(data, again)


def test_damaged_cache_is_regenerated(tmp_path, small_chunks):
    data, path, _ = load_or_simulate(120, 3, cache_dir=tmp_path, progress=False)
    path.write_bytes(b"not an npz file")
    again, path2, loaded = load_or_simulate(120, 3, cache_dir=tmp_path, progress=False)
    assert path2 == path and not loaded  # simulated again, so not reported as loaded
    assert_same(data, again)
    with np.load(path) as f:  # rewritten whole
        assert set(f.files) == set(KEYS)
    assert not list(tmp_path.glob("*.tmp"))


def test_no_cache_dir():
    data, path, loaded = load_or_simulate(30, 3, cache_dir=None, progress=False)
    assert path is None and not loaded
    assert_same(data, simulate_dataset(30, 3, progress=False))


def test_key_changes_with_what_determines_the_data():
    k = dataset_key(1000, 42)
    assert k == dataset_key(1000, 42) and len(k) == 16
    others = {dataset_key(1001, 42), dataset_key(1000, 43), dataset_key(1000, 42, device="cuda"), k}
    assert len(others) == 4


@pytest.mark.parametrize("n,fraction,n_val", [(100, 0.2, 20), (10_000, 0.2, 2000), (7, 0.5, 4), (5, 0.0, 0)])
def test_split_sizes_disjoint_reproducible(n, fraction, n_val):
    data = {
        "parameters": np.arange(n * 6, dtype=np.float32).reshape(n, 6),
        "observables": np.arange(n, dtype=np.float32)[:, None, None] * np.ones((1, 3, 1), np.float32),
        "amplitude": np.arange(n, dtype=np.float32),
    }
    train, val = split(data, fraction, seed=42)
    assert len(val["amplitude"]) == n_val and len(train["amplitude"]) == n - n_val
    ids_t, ids_v = train["amplitude"].astype(int), val["amplitude"].astype(int)
    assert not set(ids_t) & set(ids_v)
    assert sorted(np.concatenate([ids_t, ids_v]).tolist()) == list(range(n))
    for part, ids in ((train, ids_t), (val, ids_v)):  # rows stay aligned across keys
        np.testing.assert_array_equal(part["parameters"], data["parameters"][ids])
        np.testing.assert_array_equal(part["observables"][:, 0, 0], ids)
    train2, val2 = split(data, fraction, seed=42)
    np.testing.assert_array_equal(val2["amplitude"], val["amplitude"])
    if 0 < n_val < n:
        assert not np.array_equal(split(data, fraction, seed=43)[1]["amplitude"], val["amplitude"])


@pytest.mark.parametrize("n", [0, -5, 2.5, True, None])
def test_bad_n(n, tmp_path):
    with pytest.raises(ValueError, match="n must be a positive integer"):
        simulate_dataset(n, 1, progress=False)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        load_or_simulate(n, 1, cache_dir=tmp_path, progress=False)


@pytest.mark.parametrize("seed", [-1, 1.5, None, "42"])
def test_bad_seed(seed, tmp_path):
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        simulate_dataset(10, seed, progress=False)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        load_or_simulate(10, seed, cache_dir=tmp_path, progress=False)
    assert not list(tmp_path.iterdir())  # nothing cached under a non-reproducible key


@pytest.mark.gpu
def test_cuda_dataset_draws_the_cpu_datasets_parameters_and_stimuli():
    """data.device = "cuda" simulates the same draws as the CPU (drawn on a CPU generator); the
    traces agree as level 3 of the parity checks asks of float32: equal spike counts for at least
    `sim_f32_same_count` of the traces and, where the spike trains agree, |dV| <= `sim_f32_max_dv`."""
    from lif_sbi.parity import Thresholds, _spike_trains

    th = Thresholds()
    cpu = simulate_dataset(2000, 9, device="cpu", progress=False)
    gpu = simulate_dataset(2000, 9, device="cuda", progress=False)
    for k in ("parameters", "current", "amplitude"):
        assert cpu[k].tobytes() == gpu[k].tobytes(), k
    v_cpu, v_gpu = (d["observables"][..., 0].astype(np.float64) for d in (cpu, gpu))
    trains_cpu = _spike_trains(v_cpu, cpu["parameters"], torch.float32)
    trains_gpu = _spike_trains(v_gpu, cpu["parameters"], torch.float32)
    same_count = np.mean([len(a) == len(b) for a, b in zip(trains_cpu, trains_gpu)])
    same_train = np.array([np.array_equal(a, b) for a, b in zip(trains_cpu, trains_gpu)])
    assert same_count >= th.sim_f32_same_count, same_count
    assert np.abs(v_cpu - v_gpu)[same_train].max() <= th.sim_f32_max_dv


# --------------------------------------------------------------------------------------------
# the stimulus spec and the prior kind are part of the dataset's definition

STEPS = StimulusConfig(protocols=("step",), duration_s=0.02, dt_s=5e-5, onset_low_s=0.002, onset_high_s=0.006,
                       width_low_s=0.005, width_high_s=0.012)


def test_key_changes_with_the_stimulus_spec_and_prior_kind():
    """dataset_key differs for another protocol, window, step, range or prior kind; None and StimulusConfig() are the same data."""
    base = dataset_key(1000, 42)
    assert dataset_key(1000, 42, stimulus_spec=StimulusConfig(), prior="reference") == base
    variants = [
        dataset_key(1000, 42, stimulus_spec=STEPS),
        dataset_key(1000, 42, stimulus_spec=StimulusConfig(protocols=("ramp",))),
        dataset_key(1000, 42, stimulus_spec=StimulusConfig(protocols=("coloured", "step"))),
        dataset_key(1000, 42, stimulus_spec=StimulusConfig(duration_s=0.1)),
        dataset_key(1000, 42, stimulus_spec=StimulusConfig(dt_s=5e-5)),
        dataset_key(1000, 42, stimulus_spec=StimulusConfig(amplitude_high_a=2e-9)),
        dataset_key(1000, 42, prior="ordered"),
        dataset_key(1000, 42, stimulus_spec=STEPS, prior="ordered"),
    ]
    assert len({base, *variants}) == len(variants) + 1
    assert dataset_key(1000, 42, stimulus_spec=STEPS, prior="ordered") == variants[-1]  # still deterministic


def test_key_follows_a_waveform_files_bytes(tmp_path):
    """With the file protocol the key changes when the waveform file's contents change under the same name."""
    path = tmp_path / "w.npy"
    np.save(path, np.zeros(1000))
    spec = StimulusConfig(protocols=("file",), file=str(path))
    first = dataset_key(100, 1, stimulus_spec=spec)
    assert dataset_key(100, 1, stimulus_spec=spec) == first
    np.save(path, np.full(1000, 0.1e-9))
    assert dataset_key(100, 1, stimulus_spec=spec) != first


def test_simulate_dataset_with_a_step_spec_and_ordered_prior(small_chunks):
    """simulate_dataset(stimulus_spec=steps, prior="ordered"): traces of spec.n_samples, step currents, ordered parameters, reproducible."""
    a = simulate_dataset(250, 42, progress=False, stimulus_spec=STEPS, prior="ordered")
    assert a["parameters"].shape == (250, 6) and a["observables"].shape == (250, STEPS.n_samples, 1) == (250, 401, 1)
    assert a["current"].shape == (250, 401) and a["amplitude"].shape == (250,)
    assert all(a[k].dtype == np.float32 for k in KEYS)
    p = a["parameters"].astype(np.float64)
    assert np.all(p[:, INDEX["V_res"]] <= p[:, INDEX["E_L"]] - 2e-3 + 1e-7)  # V_res <= E_L - 2 mV (up to float32 rounding)
    cur = a["current"]
    assert np.all(cur == np.where(cur != 0, a["amplitude"][:, None], 0))  # steps: 0 or the height
    assert np.all(cur[:, 0] == 0) and np.all(cur[:, -1] == 0)  # the pulses start and end inside the window
    assert_same(a, simulate_dataset(250, 42, progress=False, stimulus_spec=STEPS, prior="ordered"))
    # each chunk is simulate_batch with its chunk seed and the same spec
    seed = int(np.random.SeedSequence(42).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
    assert_same({k: v[:100] for k, v in a.items()}, simulate_batch(100, seed, stimulus=STEPS, prior="ordered"))
    ref = simulate_dataset(250, 42, progress=False)
    assert ref["observables"].shape == (250, 501, 1) and not np.array_equal(ref["parameters"], a["parameters"])


def test_default_spec_gives_the_reference_dataset():
    """simulate_dataset with StimulusConfig() and prior="reference" gives the reference dataset bit for bit."""
    assert_same(simulate_dataset(40, 8, progress=False, stimulus_spec=StimulusConfig(), prior="reference"),
                simulate_dataset(40, 8, progress=False))


def test_cache_keeps_specs_apart(tmp_path, monkeypatch, small_chunks):
    """load_or_simulate caches each (stimulus spec, prior) under its own file and loads it back on the second call."""
    plain, plain_path, _ = load_or_simulate(120, 4, cache_dir=tmp_path, progress=False)
    steps, steps_path, loaded = load_or_simulate(120, 4, cache_dir=tmp_path, progress=False, stimulus_spec=STEPS, prior="ordered")
    assert not loaded and steps_path != plain_path and steps_path.name.startswith("lif_120_4_")
    assert dataset_key(120, 4, stimulus_spec=STEPS, prior="ordered") in steps_path.name
    assert steps["observables"].shape == (120, 401, 1) and plain["observables"].shape == (120, 501, 1)

    def must_not_simulate(*a, **k):
        raise AssertionError("simulated although the cache holds the dataset")

    monkeypatch.setattr(dataset, "simulate_dataset", must_not_simulate)
    again, path, loaded = load_or_simulate(120, 4, cache_dir=tmp_path, progress=False, stimulus_spec=STEPS, prior="ordered")
    assert loaded and path == steps_path
    assert_same(steps, again)
