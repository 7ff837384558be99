"""A run's diagnostics sampling in a fresh process, with and without `backends.compile_inference`.

Times `estimator.sample_posterior` (what the training command's diagnostics and `lif_sbi.infer`
do: the first round, then the rejection rounds, each a new input shape) twice in one process: the
first call includes every compilation the process needs, the second is warm. Under JAX,
`--eager` restores BayesFlow's own eager sampler and condition builder in place of the jitted
program `compile_inference` builds; under torch and TensorFlow it likewise replaces the recorded
flow sampling (a traced program or a tf.function) with BayesFlow's eager one. Prints one JSON
line. Run each mode in its own process, with the JAX compilation cache off so that nothing comes
from an earlier process::

    LIF_SBI_JAX_CACHE= KERAS_BACKEND=jax .venv/bin/python bench/inference_compile.py RUN_DIR
    LIF_SBI_JAX_CACHE= KERAS_BACKEND=jax .venv/bin/python bench/inference_compile.py RUN_DIR --eager

RUN_DIR holds `model.keras` and `config.toml` (a training command's run folder); the test traces
are its configuration's (diagnostics.n_test traces, diagnostics.seed, diagnostics.n_draws draws).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bayesflow.approximators.helpers.conditions import ConditionBuilder
from bayesflow.approximators.helpers.samplers import Sampler

from lif_sbi import backends, dataset, estimator
from lif_sbi.config import load_config


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--eager", action="store_true", help="BayesFlow's own eager sampling (what compile_inference replaces)")
    args = ap.parse_args(argv)
    missing = [name for name in ("model.keras", "config.toml") if not (args.run_dir / name).is_file()]
    if missing:
        ap.exit(2, f"inference_compile: {args.run_dir} is not a run folder: it has no {' or '.join(missing)} (give a training command's results/<run_id>)\n")
    t0 = time.perf_counter()
    config = load_config(args.run_dir / "config.toml")
    approximator = estimator.load_approximator(args.run_dir / "model.keras")
    if args.eager:
        approximator.sampler, approximator.condition_builder = Sampler(), ConditionBuilder()
    out = {"backend": backends.name, "device": backends.device_name(), "mode": "eager" if args.eager else "compile_inference",
           "load_s": round(time.perf_counter() - t0, 2)}
    diag = config.diagnostics
    test = dataset.simulate_dataset(diag.n_test, diag.seed, progress=False)
    out["traces"], out["draws"] = diag.n_test, diag.n_draws
    for key in ("first_s", "again_s"):
        t = time.perf_counter()
        draws = estimator.sample_posterior(approximator, test["observables"], diag.n_draws, seed=diag.seed)
        out[key] = round(time.perf_counter() - t, 2)
    out["draws_shape"] = list(draws.shape)
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
