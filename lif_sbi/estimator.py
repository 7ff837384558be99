"""The posterior estimator: BayesFlow adapter, summary network and CouplingFlow, built from a config."""

from __future__ import annotations

from pathlib import Path

import bayesflow as bf
import keras
import numpy as np

from . import networks  # noqa: F401  (registers the summary networks for loading)
from .config import ModelConfig
from .priors import DISPLAY_SCALE, N_PARAMS
from .stimulus import N_SAMPLES

VOLT_TO_MV = 1e3


def make_adapter() -> bf.Adapter:
    """Map simulator output (SI units) to the approximator's inputs, invertibly.

    parameters (N, 6) SI → display units (pF, nS, mV, mV, mV, ms) → inference_variables;
    observables (N, 501, 1) V → mV → summary_variables. Standardisation is the approximator's.
    """
    return (
        bf.Adapter()
        .keep(["parameters", "observables"])
        .convert_dtype("float64", "float32")
        .scale("parameters", by=DISPLAY_SCALE.astype("float32"))
        .scale("observables", by=VOLT_TO_MV)
        .rename("parameters", "inference_variables")
        .rename("observables", "summary_variables")
    )


def build_approximator(model: ModelConfig) -> bf.approximators.ContinuousApproximator:
    """ContinuousApproximator = adapter + summary network + CouplingFlow, both standardised by BayesFlow."""
    summary = networks.build_summary_network(model.summary_network, summary_dim=model.summary_dim)
    flow = bf.networks.CouplingFlow(depth=model.flow_depth, transform=model.flow_transform)
    return bf.approximators.ContinuousApproximator(
        adapter=make_adapter(),
        inference_network=flow,
        summary_network=summary,
        standardize=["inference_variables", "summary_variables"],
    )


def load_approximator(path: str | Path):
    """Load a saved `model.keras` under whichever Keras backend is active."""
    return keras.saving.load_model(str(path), compile=False)


def as_observables(traces_v) -> np.ndarray:
    """Traces (N, 501) or (N, 501, 1) or (501,) in V → (N, 501, 1) float32, checked."""
    x = np.asarray(traces_v, dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3 or x.shape[1:] != (N_SAMPLES, 1):
        raise ValueError(f"traces must have shape (N, {N_SAMPLES}) or (N, {N_SAMPLES}, 1) in V; got {np.shape(traces_v)}")
    if not np.isfinite(x).all():
        raise ValueError("traces must be finite (no NaN or inf)")
    return x


def sample_posterior(approximator, traces_v, n_draws: int, *, batch_size: int = 64, seed: int | None = None) -> np.ndarray:
    """Posterior draws for each trace: returns (N, n_draws, 6) in SI units."""
    obs = as_observables(traces_v)
    out = approximator.sample(num_samples=n_draws, conditions={"observables": obs}, batch_size=batch_size, seed=seed)
    draws = np.asarray(out["parameters"], dtype=np.float64)
    if draws.shape != (len(obs), n_draws, N_PARAMS):
        raise RuntimeError(f"unexpected posterior draw shape {draws.shape}")
    return draws
