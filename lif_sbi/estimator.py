"""The posterior estimator: BayesFlow adapter, summary network and CouplingFlow, built from a config."""

from __future__ import annotations

import warnings
from pathlib import Path

import bayesflow as bf
import keras
import numpy as np

from bayesflow.networks.defaults import COUPLING_MLP_DEFAULTS

from . import backends, calibration, networks, quiet, subnets  # noqa: F401  (networks, subnets register their layers for loading)
from .config import ModelConfig
from . import features
from .priors import DISPLAY_SCALE, HIGH, LOW, N_PARAMS, in_support, onto_atoms, repair
from .stimulus import DT_S

VOLT_TO_MV = 1e3
AMPERE_TO_NA = 1e9


#: the logit map of the adapter is stretched this share of each prior width beyond both bounds
#: (`model.logit_margin`'s default), so the V_res atom at its lower bound (priors.ATOMS) maps to a
#: finite value (about -4.6 in logit units) rather than to -35; draws that land in the margins are
#: handled by `sample_posterior`.
BOUND_MARGIN = 0.01


def make_adapter(logit_bounds: bool = True, observe_current: bool = False, leak_features: bool = False,
                 spike_features: bool = False, margin: float = BOUND_MARGIN) -> bf.Adapter:
    """Map simulator output (SI units) to the approximator's inputs, invertibly.

    parameters (N, 6) SI → display units (pF, nS, mV, mV, mV, ms) → logit of the position within
    the prior's bounds (widened by `margin` of their width each side; BayesFlow's `constrain`) →
    inference_variables.
    The flow then models an unbounded variable: a uniform prior becomes a smooth logistic density
    instead of a box with hard edges, which Gaussian-based flows fit badly (measured: C_m and g_L
    90 % intervals covered 0.77 / 0.82 of true values without this, 0.86 / 0.92 with it, same
    training). Draws come back inside the widened bounds by construction.
    logit_bounds=False skips the logit (the reference study's plain standardisation).
    observables (N, T, 1) V → mV → summary_variables; with observe_current, current (N, T) A →
    nA as a second channel: summary_variables (N, T, 2). With leak_features, features (N, 4 * scales)
    (lif_sbi.features) → inference_conditions, passed to the flow beside the summary; with
    spike_features, spike_features (N, 3 + 2 * SPIKE_TIMES) after them (or alone) likewise.
    Standardisation (per channel and feature) is the approximator's.
    """
    low, high = LOW * DISPLAY_SCALE, HIGH * DISPLAY_SCALE
    conditions = (["features"] if leak_features else []) + (["spike_features"] if spike_features else [])
    margin = margin * (high - low)
    adapter = (
        bf.Adapter()
        .keep(["parameters", "observables"] + (["current"] if observe_current else []) + conditions)
        .convert_dtype("float64", "float32")
        .scale("parameters", by=DISPLAY_SCALE.astype("float32"))
    )
    if logit_bounds:
        adapter = adapter.constrain("parameters", lower=(low - margin).astype("float32"), upper=(high + margin).astype("float32"))
    adapter = adapter.scale("observables", by=VOLT_TO_MV).rename("parameters", "inference_variables")
    if len(conditions) == 1:
        adapter = adapter.rename(conditions[0], "inference_conditions")
    elif conditions:
        adapter = adapter.concatenate(conditions, into="inference_conditions", axis=-1)
    if not observe_current:
        return adapter.rename("observables", "summary_variables")
    return (adapter.expand_dims("current", axis=-1).scale("current", by=AMPERE_TO_NA)
            .concatenate(["observables", "current"], into="summary_variables", axis=-1))


def observes_current(approximator) -> bool:
    """Whether the approximator's summary network takes the injected current (`model.observe_current`)."""
    return any("current" in str(t.get_config()) for t in getattr(approximator.adapter, "transforms", []))


def uses_leak_features(approximator) -> bool:
    """Whether the approximator's flow is conditioned on `lif_sbi.features` (`model.leak_features`)."""
    return any("'features'" in str(t.get_config()) for t in getattr(approximator.adapter, "transforms", []))


def uses_spike_features(approximator) -> bool:
    """Whether the approximator's flow is conditioned on `lif_sbi.features.spike_features` (`model.spike_features`)."""
    return any("'spike_features'" in str(t.get_config()) for t in getattr(approximator.adapter, "transforms", []))


def leak_scales(approximator) -> int:
    """How many time scales of `lif_sbi.features` the flow is conditioned on (`model.leak_scales`),
    read from the width of its standardisation of them (less the spike features' columns); 0
    without leak features."""
    if not uses_leak_features(approximator):
        return 0
    weights = approximator.standardize_layers["inference_conditions"].weights
    if not weights:
        raise ValueError("the approximator is not built yet: its leak-feature scales are known once it has seen data")
    spikes = len(features.spike_feature_names()) if uses_spike_features(approximator) else 0
    return (int(weights[0].shape[-1]) - spikes) // features.N_FEATURES


def with_features(approximator, data: dict, dt_s: float) -> dict:
    """`data` ("observables", "current") plus the features the approximator is conditioned on, if any."""
    if "current" not in data:
        return data
    return features.add_features(data, dt_s, leak_scales(approximator), uses_spike_features(approximator))


def subnet_arguments(kind: str, dropout: float) -> dict:
    """CouplingFlow's ``subnet`` and ``subnet_kwargs`` for `kind` ("mlp" or "fused"), BayesFlow's coupling defaults."""
    if kind == "mlp":
        return {"subnet": "mlp", "subnet_kwargs": {"dropout": dropout}}
    # CouplingMLP has no residual or norm; BayesFlow's coupling defaults use neither
    defaults = dict(COUPLING_MLP_DEFAULTS)
    residual, norm = defaults.pop("residual"), defaults.pop("norm")
    if residual or norm is not None:
        raise RuntimeError(f"BayesFlow's coupling MLP defaults changed ({COUPLING_MLP_DEFAULTS}); CouplingMLP does not match them")
    return {"subnet": subnets.CouplingMLP, "subnet_kwargs": defaults | {"dropout": dropout}}


def build_approximator(model: ModelConfig) -> bf.approximators.ContinuousApproximator:
    """ContinuousApproximator = adapter + summary network + CouplingFlow, both standardised by
    BayesFlow; its sampling made the backend's fastest (`backends.compile_inference`)."""
    extra = {"trace_features": True} if model.trace_features else {}
    summary = networks.build_summary_network(model.summary_network, summary_dim=model.summary_dim, **extra)
    base = bf.distributions.DiagonalStudentT(df=model.flow_base_df) if model.flow_base_df else "normal"
    flow = bf.networks.CouplingFlow(
        depth=model.flow_depth, transform=model.flow_transform, base_distribution=base,
        **subnet_arguments(model.flow_subnet, model.flow_dropout),
    )
    approximator = bf.approximators.ContinuousApproximator(
        adapter=make_adapter(model.logit_bounds, model.observe_current, model.leak_features, model.spike_features, model.logit_margin),
        inference_network=flow,
        summary_network=summary,
        standardize=["inference_variables", "summary_variables"]
        + (["inference_conditions"] if model.leak_features or model.spike_features else []),
    )
    backends.compile_inference(approximator)
    return approximator


def quiet_file_probe() -> None:
    """Let Keras look for TensorFlow's gfile once, with TensorFlow's start-up lines filtered out.

    Keras' file utilities (used by every save and load) import TensorFlow whenever it is installed,
    under any backend, to see whether gfile is available; that import prints TensorFlow's C++
    start-up lines (oneDNN, CUDA drivers) straight to file descriptor 2 (see `quiet.startup_lines`).
    """
    from keras.src.utils.module_utils import gfile

    with quiet.startup_lines():
        gfile.available  # noqa: B018  (the import happens here)


def load_approximator(path: str | Path):
    """Load a saved `model.keras` under whichever Keras backend is active (its sampling made the
    backend's fastest, `backends.compile_inference`, as `build_approximator` does)."""
    quiet_file_probe()
    approximator = keras.saving.load_model(str(path), compile=False)
    backends.compile_inference(approximator)
    return approximator


def as_observables(traces_v) -> np.ndarray:
    """Traces (N, T) or (N, T, 1) or (T,) in V → (N, T, 1) float32, checked (T as the model was
    trained for: 501 for the reference's window)."""
    x = np.asarray(traces_v, dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3 or x.shape[2] != 1 or x.shape[1] < 2:
        raise ValueError(f"traces must have shape (N, T) or (N, T, 1) in V; got {np.shape(traces_v)}")
    if not np.isfinite(x).all():
        raise ValueError("traces must be finite (no NaN or inf)")
    return x


def _as_currents(current_a, obs: np.ndarray, approximator) -> np.ndarray | None:
    """The injected currents (N, T) float32 in A a model with `observe_current` needs, checked
    against the traces `obs` (N, T, 1); None for a model that does not take them."""
    if not observes_current(approximator):
        return None
    if current_a is None:
        raise ValueError("this model was trained with the injected current observed (model.observe_current): pass current=(N, T) in A")
    cur = np.asarray(current_a, dtype=np.float32)
    cur = cur[None] if cur.ndim == 1 else cur
    if cur.shape != obs.shape[:2]:
        raise ValueError(f"current must have the traces' shape {obs.shape[:2]} in A; got {np.shape(current_a)}")
    if not np.isfinite(cur).all():
        raise ValueError("current must be finite (no NaN or inf)")
    return cur


def _draw(approximator, conditions, idx, k, round_seed, batch_size, width_scale, state):
    """One call of ``approximator.sample``: `k` draws for each trace ``conditions[key][idx]``,
    (len(idx), k, 6) SI, rescaled by `width_scale` when given. Returns (draws, state): the
    rescaling state (per-trace medians in unbounded coordinates) of the first call, kept for
    every later one."""
    x = conditions["observables"][idx]
    # BayesFlow samples `batch_size` traces at a time. Batches of one size (the last one padded
    # with copies of the last trace, whose draws are dropped: fewer than one per batch) give
    # one input shape per call, so JAX, whose eager operations compile once per shape,
    # compiles once per call instead of twice.
    n_batches = max(1, -(-len(x) // batch_size))
    per_batch = max(1, -(-len(x) // n_batches))
    pad = n_batches * per_batch - len(x)
    padded = {key: np.concatenate([v[idx], np.repeat(v[idx][-1:], pad, axis=0)]) for key, v in conditions.items()}
    out = approximator.sample(num_samples=k, conditions=padded, batch_size=per_batch, seed=round_seed)
    d = np.asarray(out["parameters"], dtype=np.float64)[: len(x)]
    if d.shape != (len(x), k, N_PARAMS):
        raise RuntimeError(f"unexpected posterior draw shape {d.shape}")
    if width_scale is not None:
        d, st = calibration.rescale(approximator.adapter, d, width_scale, None if state is None else calibration.subset(state, idx))
        state = st if state is None else state
    return d, state


def _top_up_request(kept, tried, short, n_draws) -> int:
    """Draws per trace for the next top-up round of the traces `short`: a power of two."""
    # Each short trace asks for what it still misses over its acceptance so far (x1.2, at
    # most 10 x n_draws). All of them are drawn in one call per round, the request being the
    # power of two that covers 90 % of the asks: the few that ask for more get that many now
    # and the rest in the next round, so one trace with a low acceptance does not multiply
    # the draws of all the others. Each call is one more pass of the summary network over its
    # traces and one more (traces x draws) shape, which JAX compiles: grouping the traces by
    # their own power of two made 5 calls for the first top-up of a `reference` run's 400
    # test traces, which cost 5 compilations (about 4.5 s each on an H200) and 5 passes.
    asks = [min(10 * n_draws, max(64, np.ceil(1.2 * (n_draws - len(kept[i])) / (max(len(kept[i]), 1) / tried[i]))))
            for i in short]
    return 1 << (int(np.quantile(asks, 0.9, method="higher")) - 1).bit_length()


def _top_up(draw, kept, tried, accepted, n_draws, seed, max_rounds, prior) -> None:
    """Draw again for every trace with fewer than `n_draws` kept draws, up to `max_rounds` rounds;
    extends `kept` (lists of draws in the support) and counts into `tried` and `accepted`."""
    n = len(kept)
    for round_ in range(1, max_rounds + 1):
        short = [i for i in range(n) if len(kept[i]) < n_draws]
        if not short:
            break
        k = _top_up_request(kept, tried, short, n_draws)
        round_seed = None if seed is None else seed + 1000 * round_
        extra = onto_atoms(draw(np.asarray(short), k, round_seed), kind=prior)
        for j, i in enumerate(short):
            ok = extra[j][in_support(extra[j], kind=prior)]
            kept[i].extend(ok)
            accepted[i] += len(ok)
            tried[i] += k


def _repair_empty(first, kept, empty, prior) -> None:
    """Give each trace in `empty` (no draw in the support) its first-round draws clipped into the
    prior's bounds and ordered by the prior's repair, those then in the support if any."""
    # The posterior mass lies (almost) wholly outside the prior (seen: a trace that never
    # spikes, E_L 1.4 mV above V_res's lower bound, where the flow put 99 % of V_res above
    # E_L). Rather than fail, take the first round's draws clipped into the prior's bounds and
    # ordered as the prior orders its own draws (priors.repair: V_res = E_L - 2 mV, clipped,
    # where V_res >= E_L), keep those then in the support, and say so (acceptance 0).
    warnings.warn(f"{len(empty)} trace(s), e.g. #{empty[0]}, had no posterior draw inside the prior's support; "
                  "their draws are clipped into the prior's bounds and ordered by the prior's own repair")
    for i in empty:
        fixed = repair(np.clip(first[i], LOW, HIGH))
        inside = fixed[in_support(fixed, kind=prior)]
        kept[i] = list(inside if len(inside) else fixed)


def _confine_to_prior(draw, first, n_draws, seed, max_rounds, prior):
    """Draws of `first` (N, S, 6) SI confined to the prior's support, topped up by `draw` and filled
    where short: returns (draws (N, n_draws, 6), acceptance (N,))."""
    n = len(first)
    # Written by hand: BayesFlow 2.0 has no rejection step for bounded priors.
    first = onto_atoms(first, kind=prior)
    kept = [list(row[in_support(row, kind=prior)]) for row in first]
    tried = np.full(n, n_draws, dtype=np.int64)
    accepted = np.array([len(k) for k in kept], dtype=np.int64)
    _top_up(draw, kept, tried, accepted, n_draws, seed, max_rounds, prior)
    short = [i for i in range(n) if len(kept[i]) < n_draws]
    empty = [i for i in short if not kept[i]]
    if empty:
        _repair_empty(first, kept, empty, prior)
    if len(short) > len(empty):
        warnings.warn(f"{len(short) - len(empty)} trace(s) kept fewer than {n_draws} draws inside the prior; filled by resampling")
    rng = np.random.default_rng(seed)
    for i in short:
        if len(kept[i]) < n_draws:
            kept[i] = [kept[i][j] for j in rng.integers(len(kept[i]), size=n_draws)]
    draws = np.stack([np.asarray(kept[i][:n_draws]) for i in range(n)])
    acceptance = np.array([accepted[i] / tried[i] for i in range(n)])
    return draws, acceptance


def sample_posterior(
    approximator,
    traces_v,
    n_draws: int,
    *,
    batch_size: int = 128,
    seed: int | None = None,
    within_prior: bool = True,
    max_rounds: int = 10,
    return_acceptance: bool = False,
    width_scale=None,
    current=None,
    prior: str = "reference",
    dt_s: float = DT_S,
):
    """Posterior draws for each trace (N, T) V: returns (N, n_draws, 6) in SI units.

    current (N, T) A: the injected currents, which a model trained with `model.observe_current`
    needs (and any other ignores). prior: the kind the model was trained on (`prior.kind`), whose
    support the draws are confined to. dt_s: the traces' sampling step, which a model with
    `model.leak_features` or `model.spike_features` needs (the step it was trained at).

    within_prior=True confines the draws to the prior's support, where the true posterior
    lives: draws below V_res = -80 mV, the bound on which the prior's ordering repair puts a
    point mass (12 % of the prior) that a flow can only smear, are moved onto it
    (`priors.onto_atoms`); other draws outside the support (bounds, V_res < E_L < V_th) are
    rejected and drawn again, as sbi does for bounded priors. Without this a flow's rare
    far-tail draws dominate posterior means. return_acceptance=True also returns the share of
    draws kept per trace, (N,). A trace still short after `max_rounds` rounds is filled by
    resampling its kept draws; one with none kept gets its first draws clipped into the prior's
    bounds and ordered by the prior's own repair (`priors.repair`), those then in the support
    resampled to `n_draws` (both with a warning; its acceptance is 0).
    width_scale (6,) or (L, 6): the factors of `calibration` (a run's calibration.json), applied
    to every round's raw draws about the first round's per-trace medians and levels; None draws
    as trained.
    """
    obs = as_observables(traces_v)
    n = len(obs)
    conditions = {"observables": obs}
    cur = _as_currents(current, obs, approximator)
    if cur is not None:
        conditions = with_features(approximator, conditions | {"current": cur}, dt_s)
    if width_scale is not None and np.all(np.asarray(width_scale) == 1.0):
        width_scale = None  # nothing to rescale: skip the adapter round trip
    state = None  # per-trace medians (and sorted first draws) in unbounded coordinates, when rescaling

    def draw(idx, k, round_seed):
        nonlocal state
        d, state = _draw(approximator, conditions, idx, k, round_seed, batch_size, width_scale, state)
        return d

    first = draw(np.arange(n), n_draws, seed)
    if not within_prior:
        return (first, np.ones(n)) if return_acceptance else first
    draws, acceptance = _confine_to_prior(draw, first, n_draws, seed, max_rounds, prior)
    return (draws, acceptance) if return_acceptance else draws
