"""Offline datasets: simulate N traces, split train/validation, cache on disk by what determines them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import cpu_kernel, priors, simulator, stimulus
from .config import CACHE_DIR, StimulusConfig
from .files import atomic_save_npz

CHUNK = 10_000  # traces simulated per seed chunk; part of the dataset's definition
DEFAULT_CACHE_DIR = CACHE_DIR
KEYS = ("parameters", "observables", "current", "amplitude")


def dataset_key(n: int, seed: int, device: str = "cpu", *, stimulus_spec=None, prior: str = "reference") -> str:
    """A hash of everything that determines the dataset: size, seed, device, the stimulus and prior
    (and a stimulus file's bytes) and the model's code."""
    spec = repr(stimulus_spec or StimulusConfig())
    box = f"{priors.LOW.tolist()}..{priors.HIGH.tolist()}"  # the process's prior box (priors.set_box)
    h = hashlib.sha256(f"n={n};seed={seed};device={device};chunk={CHUNK};torch={torch.__version__};stimulus={spec};prior={prior};box={box}".encode())
    if stimulus_spec is not None and "file" in stimulus_spec.protocols:
        h.update(Path(stimulus_spec.file).read_bytes())
    for module in (priors, stimulus, simulator, cpu_kernel):
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()[:16]


def simulate_dataset(n: int, seed: int, *, device: str = "cpu", progress: bool = True, stimulus_spec=None,
                     prior: str = "reference") -> dict[str, np.ndarray]:
    """Simulate `n` traces in chunks of `CHUNK`, each seeded from `seed` (same seed → same arrays).

    stimulus_spec: a `config.StimulusConfig` (None: the reference's); prior: a prior kind.
    Returns the arrays of `simulator.simulate_batch`: parameters (n, 6) SI, observables
    (n, T, 1) V, current (n, T) A, amplitude (n,) A; all float32, noise-free.
    """
    n, seed = _check_n_seed(n, seed)
    seeds = np.random.SeedSequence(seed).generate_state((n + CHUNK - 1) // CHUNK, dtype=np.uint64)
    parts = []
    bar = tqdm(total=n, desc="simulating", unit="trace", disable=not progress or n <= 5 * CHUNK, leave=False)
    for i, chunk_seed in enumerate(seeds):
        m = min(CHUNK, n - i * CHUNK)
        parts.append(simulator.simulate_batch(m, int(chunk_seed >> np.uint64(1)), device=device, stimulus=stimulus_spec, prior=prior))
        bar.update(m)
    bar.close()
    return {k: np.concatenate([p[k] for p in parts]) for k in KEYS}


def _check_n_seed(n, seed) -> tuple[int, int]:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer number of traces, got {n!r}")
    # An integer seed is required: the cache file is named by it, so None would cache random data.
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(n), int(seed)


def cache_file(n: int, seed: int, device: str = "cpu", cache_dir: Path | str = DEFAULT_CACHE_DIR, **spec) -> Path:
    """Where `load_or_simulate` keeps the dataset for (n, seed, device, stimulus_spec, prior)."""
    return Path(cache_dir) / f"lif_{n}_{seed}_{dataset_key(n, seed, device, **spec)}.npz"


def load_or_simulate(
    n: int, seed: int, *, device: str = "cpu", cache_dir: Path | str | None = DEFAULT_CACHE_DIR, progress: bool = True,
    stimulus_spec=None, prior: str = "reference",
) -> tuple[dict[str, np.ndarray], Path | None, bool]:
    """The dataset for (n, seed, stimulus_spec, prior), from the cache when present.

    Returns (arrays, cache path or None, loaded): ``loaded`` is True only when the arrays came
    from a readable cache file (a damaged one is simulated again and rewritten)."""
    n, seed = _check_n_seed(n, seed)
    spec = {"stimulus_spec": stimulus_spec, "prior": prior}
    if cache_dir is None:
        return simulate_dataset(n, seed, device=device, progress=progress, **spec), None, False
    path = cache_file(n, seed, device, cache_dir, **spec)
    if path.exists():
        try:
            with np.load(path) as f:
                return {k: f[k] for k in KEYS}, path, True
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache file is simply regenerated
    data = simulate_dataset(n, seed, device=device, progress=progress, **spec)
    atomic_save_npz(path, **data)
    return data, path, False


def split(data: dict[str, np.ndarray], validation_fraction: float, seed: int) -> tuple[dict, dict]:
    """Random train/validation split: returns (train, validation) dicts of the same keys."""
    n = len(data["parameters"])
    n_val = round(n * validation_fraction)
    order = np.random.default_rng(seed).permutation(n)
    val, train = order[:n_val], order[n_val:]
    return {k: v[train] for k, v in data.items()}, {k: v[val] for k, v in data.items()}
