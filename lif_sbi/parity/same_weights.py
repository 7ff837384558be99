"""Level 1, same weights → same numbers: every backend's save evaluated under every backend on one fixed batch."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .. import calibration
from ..priors import HIGH, LOW, PARAM_NAMES
from .checks import Check, _le
from .thresholds import Thresholds
from .workers import run_worker

# SGD's step size for reading gradients off a training step: a power of two, so that
# (w_before − w_after) / step is the gradient to float32 rounding even where it is far smaller than w.
GRADIENT_STEP = 2.0**24
# Gradients this much smaller than the largest one are left out of the comparison: there a
# float32 roundoff of the loss is a relative error of order one (at initialisation whole subnets
# have zero gradient, behind BayesFlow's zero-initialised output layers).
GRADIENT_FLOOR = 1e-6


# ---------------------------------------------------------------------------------------------
# Worker side (imports Keras)


def level1_numbers(approximator, x, theta, z) -> dict[str, np.ndarray]:
    """Summary outputs, log p(θ|x) and the draws θ = T⁻¹(z; x) for a fixed batch.

    x (n, 501, 1) V, theta (n, 6) SI, z (n, S, 6) standard-normal base draws.
    """
    import keras

    summaries = approximator.summarize({"observables": x})
    log_prob = keras.ops.convert_to_numpy(approximator.log_prob({"parameters": theta, "observables": x}))
    draws = draws_from_base(approximator, x, z)
    return {"summaries": np.asarray(summaries, np.float64), "log_prob": np.asarray(log_prob, np.float64), "draws": draws}


def training_gradients(approximator, x, theta) -> list[np.ndarray]:
    """The gradient of the training loss w.r.t. every trainable variable (in their order) for the
    fixed batch x (n, 501, 1) V, theta (n, 6) SI, from the approximator's current weights.

    Read off one training step as `fit` runs it (`backends.train_step_function`: the backend's own
    autograd, compiled as `fit` compiles it) with plain SGD: w_after = w_before − step · ∂loss/∂w.
    Written by hand because Keras has no backend-neutral gradient function. Dropout is switched
    off first (its masks come from each backend's own random stream), so this is the gradient of
    the loss without dropout noise. The step changes the weights, the optimizer and the dropout
    rates: use an approximator that is thrown away afterwards.
    """
    import keras

    from .. import backends
    from ..networks import FastGRU
    from ..subnets import CouplingMLP

    for layer in approximator._flatten_layers(include_self=False):  # Keras' own walk over sublayers
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
        elif isinstance(layer, (FastGRU, CouplingMLP)):
            layer.dropout = 0.0

    batch = approximator.adapter({"parameters": theta, "observables": x})
    batch = {k: keras.ops.convert_to_tensor(v) for k, v in batch.items() if k in ("inference_variables", "summary_variables")}
    approximator.compile(optimizer=keras.optimizers.SGD(GRADIENT_STEP))
    variables = approximator.trainable_variables
    before = [keras.ops.convert_to_numpy(v).astype(np.float64) for v in variables]
    backends.train_step_function(approximator)(batch)
    return [(b - keras.ops.convert_to_numpy(v).astype(np.float64)) / GRADIENT_STEP for b, v in zip(before, variables)]


def draws_from_base(approximator, x, z) -> np.ndarray:
    """Posterior draws made from given base draws z (n, S, 6), as ContinuousApproximator.sample does.

    keras.random streams differ per backend, so `approximator.sample` cannot give the same draws
    under two backends; this reproduces its pipeline with z injected. `_prepare_conditions` is
    private BayesFlow API (2.0.12): it adapts, standardises the summary variables and runs the
    summary network exactly as `sample` does, and no public method returns the resolved
    conditions. If a BayesFlow update changes it, the sanity check "z-path == BayesFlow sample"
    below fails rather than this silently drifting.
    """
    import keras

    n, s, d = z.shape
    conditions, _, _ = approximator._prepare_conditions({"observables": x})
    # row i*s + j pairs trace i with draw j, the order of BayesFlow's Sampler.repeat_and_flatten_conditions
    conditions = keras.ops.repeat(conditions, s, axis=0)
    zt = keras.ops.convert_to_tensor(z.reshape(n * s, d).astype(np.float32))
    u = approximator.inference_network(zt, conditions=conditions, inverse=True)  # InferenceNetwork.call
    u = approximator.standardizer.maybe_standardize(u, key="inference_variables", stage="inference", forward=False)
    out = approximator.adapter({"inference_variables": keras.ops.convert_to_numpy(u)}, inverse=True, strict=False)
    return np.asarray(out["parameters"], np.float64).reshape(n, s, d)


def _bayesflow_sample_with_base(approximator, x, z) -> np.ndarray:
    """`approximator.sample` with its base distribution made to return z: the reference the z-path must equal.

    Through BayesFlow's own (eager) sampler and condition builder: the reference is BayesFlow's
    sampling, and a program compiled by `backends.compile_inference` would keep whatever the
    patched base distribution returned when it was traced (the z of this call in every later call
    of the same shape, or random draws traced before the patch)."""
    import keras
    from bayesflow.approximators.helpers.conditions import ConditionBuilder
    from bayesflow.approximators.helpers.samplers import Sampler

    n, s, d = z.shape
    base = approximator.inference_network.base_distribution
    zt = keras.ops.convert_to_tensor(z.reshape(n * s, d).astype(np.float32))
    original = base.sample, approximator.sampler, approximator.condition_builder
    base.sample = lambda batch_shape, seed=None, **kw: zt
    approximator.sampler, approximator.condition_builder = Sampler(), ConditionBuilder()
    try:
        out = approximator.sample(num_samples=s, conditions={"observables": x})
    finally:
        base.sample, approximator.sampler, approximator.condition_builder = original
    return np.asarray(out["parameters"], np.float64)


def task_evaluate(args: dict) -> dict:
    """Worker task `evaluate`: a saved model's level-1 numbers (and, with `test`, its posterior
    draws for level 2) on the fixed batch, saved to `args["out"]`."""
    from .. import backends, estimator

    with np.load(args["batch"]) as f:
        x, theta, z = f["observables"], f["parameters"], f["z"]
    t0 = time.perf_counter()
    approximator = estimator.load_approximator(args["model"])
    numbers = level1_numbers(approximator, x, theta, z)
    answer = {"backend": backends.name, "device": backends.device_name(), "load_eval_s": round(time.perf_counter() - t0, 2)}
    if args.get("sanity"):
        again = level1_numbers(estimator.load_approximator(args["model"]), x, theta, z)
        answer["reload_max_abs"] = {k: float(np.max(np.abs(numbers[k] - again[k]))) for k in numbers}
        bf_draws = _bayesflow_sample_with_base(approximator, x, z)
        answer["zpath_vs_bayesflow_rel"] = float(np.max(np.abs(bf_draws - numbers["draws"]) / (HIGH - LOW)))
    if args.get("test"):
        with np.load(args["test"]) as f:
            obs = f["observables"]
        t0 = time.perf_counter()
        # each model draws as its own run does: with the width factors it fitted, if any
        draws = estimator.sample_posterior(approximator, obs, int(args["n_draws"]), seed=int(args.get("seed", 0)),
                                           width_scale=calibration.load_for(args["model"]))
        answer["sample_s"] = round(time.perf_counter() - t0, 2)
        numbers["posterior_draws"] = draws
    # last, on a model of its own: the training step changes the weights
    numbers |= {f"gradient_{i}": g for i, g in enumerate(training_gradients(estimator.load_approximator(args["model"]), x, theta))}
    np.savez(args["out"], **numbers)
    return answer


def task_perturb(args: dict) -> dict:
    """Worker task `perturb`: save a copy of a model with one weight of its summary network changed by `delta`."""
    import keras

    from .. import estimator

    approximator = estimator.load_approximator(args["model"])
    var = next(v for v in approximator.summary_network.weights if "kernel" in v.path)
    value = keras.ops.convert_to_numpy(var).copy()
    value.flat[0] += float(args["delta"])
    var.assign(value)
    approximator.save(args["out"])
    return {"variable": var.path, "delta": float(args["delta"])}


# ---------------------------------------------------------------------------------------------
# Parent side (NumPy only)


def evaluate_everywhere(run_dir: Path, backends: list[str], variants: dict, models: dict[str, Path], seed: int,
                        n_draws: int, th: Thresholds, info: dict, say) -> tuple[dict[tuple[str, str], Path], list[Check]]:
    """Every model under every backend (`variants`: label → (its backend, overrides)); each model
    under its own backend also gets the own-save checks (level 2 draws its posteriors itself).
    Returns the evaluations' .npz files by (model, evaluating backend) and the own-save checks."""
    evals, checks = {}, []
    for b in backends:
        for m, (mb, _) in variants.items():
            out = run_dir / f"eval_{m}_model_under_{b}.npz"
            args = {"model": str(models[m]), "batch": str(run_dir / "level1_batch.npz"), "out": str(out), "seed": seed}
            if mb == b:
                args |= {"sanity": True}
            t0 = time.perf_counter()
            say(f"level 1: {m} model under {b} ...")
            ans = run_worker(b, "evaluate", args)
            info["timings_s"][f"eval {m} model under {b}"] = round(time.perf_counter() - t0, 1)
            info.setdefault("devices", {})[b] = ans["device"]
            evals[(m, b)] = out
            if mb == b:
                checks += _own_save_checks(f"{m} → {b} (own save)", ans, th)
    return evals, checks


def _own_save_checks(comparison: str, ans: dict, th: Thresholds) -> list[Check]:
    """Two loads of one save agree exactly, and the z-injected path is BayesFlow's own sampling."""
    checks = [Check(1, comparison, f"two loads, max |Δ {k}|", v, 0.0, "==", v == 0.0) for k, v in ans["reload_max_abs"].items()]
    checks.append(_le(1, comparison, "z-path vs BayesFlow sample(), max |Δθ| / prior width",
                      ans["zpath_vs_bayesflow_rel"], th.draws_rel / 100, "checks the injected-z pipeline"))
    return checks


def compare_everywhere(evals: dict[tuple[str, str], Path], backends: list[str], variants: dict, th: Thresholds) -> list[Check]:
    """Each model's numbers under every other backend against those under its own."""
    checks = []
    for m, (mb, _) in variants.items():
        ref = load_npz(evals[(m, mb)])
        for b in backends:
            if b != mb:
                checks += compare_level1(ref, load_npz(evals[(m, b)]), f"{m} → {b}", th)
    return checks


def compare_level1(ref: dict, cand: dict, comparison: str, th: Thresholds) -> list[Check]:
    """Checks that `cand` (a model evaluated under another backend) reproduces `ref`."""
    s_ref, s_c = np.asarray(ref["summaries"]), np.asarray(cand["summaries"])
    lp_ref, lp_c = np.asarray(ref["log_prob"]), np.asarray(cand["log_prob"])
    d_ref, d_c = np.asarray(ref["draws"]), np.asarray(cand["draws"])
    checks = []
    if s_ref.shape != s_c.shape or lp_ref.shape != lp_c.shape or d_ref.shape != d_c.shape:
        return [Check(1, comparison, "output shapes", None, None, "", False, f"{s_ref.shape} vs {s_c.shape} ...")]
    summary_rel = float(np.max(np.abs(s_c - s_ref)) / max(np.max(np.abs(s_ref)), 1e-30))
    checks.append(_le(1, comparison, "summary outputs, max rel. diff", summary_rel, th.summary_rel,
                      f"{s_ref.shape[0]} traces × {s_ref.shape[1]} summaries"))
    lp_rel = float(np.max(np.abs(lp_c - lp_ref)) / max(1.0, np.max(np.abs(lp_ref))))
    checks.append(_le(1, comparison, "log p(θ|x), max diff / max(1, max|log p|)", lp_rel, th.log_prob_rel,
                      f"max |log p| = {np.max(np.abs(lp_ref)):.3g}"))
    per_param = np.max(np.abs(d_c - d_ref), axis=(0, 1)) / (HIGH - LOW)
    worst = int(np.argmax(per_param))
    checks.append(_le(1, comparison, "draws from same z, max |Δθ| / prior width", float(per_param[worst]), th.draws_rel,
                      f"{d_ref.shape[0]}×{d_ref.shape[1]} draws; worst {PARAM_NAMES[worst]}"))
    g_ref, g_c = _gradients(ref), _gradients(cand)
    if g_ref and g_c:
        if [g.shape for g in g_ref] != [g.shape for g in g_c]:
            return checks + [Check(1, comparison, "training gradients: variable shapes", None, None, "", False, f"{len(g_ref)} vs {len(g_c)} variables")]
        norms = np.array([np.linalg.norm(g) for g in g_ref])
        used = [i for i in range(len(g_ref)) if norms[i] > GRADIENT_FLOOR * norms.max()]
        rel = [np.linalg.norm(g_c[i] - g_ref[i]) / norms[i] for i in used]
        worst = int(np.argmax(rel)) if rel else 0
        checks.append(_le(1, comparison, "training gradients, max over variables of |Δ∂L/∂w| / |∂L/∂w|", float(max(rel, default=np.nan)),
                          th.gradient_rel, f"{len(used)} of {len(g_ref)} variables (|∂L/∂w| > {GRADIENT_FLOOR:g} × the largest); "
                          f"worst #{used[worst] if used else '-'}, median {float(np.median(rel)) if rel else float('nan'):.2g}"))
    return checks


def _gradients(numbers: dict) -> list[np.ndarray]:
    return [np.asarray(numbers[f"gradient_{i}"]) for i in range(sum(k.startswith("gradient_") for k in numbers))]


def load_npz(path) -> dict:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}
