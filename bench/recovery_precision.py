"""Pearson r of a trained run on many fresh test traces, with bootstrap 95 % confidence intervals.

A run's report gives r on 400 test traces; for a weakly identified parameter (C_m, r ~ 0.4) the
sampling error of r on 400 traces is about (1 - r^2) / sqrt(400) ~ 0.04, too coarse to compare
with a published figure. This re-evaluates a saved model (with its calibration.json, if any) on
`--n-test` traces simulated with a seed different from the run's own test seed, and prints r per
parameter with a paired bootstrap 95 % interval (SciPy's ``bootstrap``). Figures in
bench/RESULTS.md ("Reference configuration") came from, on the 2-core CPU:

    KERAS_BACKEND=tensorflow .venv/bin/python bench/recovery_precision.py \
        results/reference_tensorflow_20261125T235153Z --n-test 4000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import stats

from lif_sbi import quiet

quiet.libraries()
with quiet.startup_lines():
    from lif_sbi import calibration, dataset, estimator
from lif_sbi.priors import PARAM_NAMES


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="a finished run folder (results/<run_id>) holding model.keras")
    p.add_argument("--n-test", type=int, default=4000, help="fresh test traces (default 4000)")
    p.add_argument("--draws", type=int, default=1000, help="posterior draws per trace (default 1000)")
    p.add_argument("--seed", type=int, default=7001, help="seed of the test traces (default 7001; runs use 2024)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    a = p.parse_args(argv)

    model_path = a.run_dir / "model.keras"
    approximator = estimator.load_approximator(model_path)
    width_scale = calibration.load_for(model_path)
    test = dataset.simulate_dataset(a.n_test, a.seed, progress=False)
    t0 = time.perf_counter()
    draws = estimator.sample_posterior(approximator, test["observables"], a.draws, seed=a.seed, width_scale=width_scale)
    sample_s = time.perf_counter() - t0
    mean, truth = draws.mean(axis=1), test["parameters"]

    def pearson(x, y, axis=-1):
        return stats.pearsonr(x, y, axis=axis).statistic

    out = {"run": str(a.run_dir), "n_test": a.n_test, "draws": a.draws, "seed": a.seed, "sample_s": round(sample_s, 1), "r": {}}
    print(f"{a.run_dir}: {a.n_test} fresh traces (seed {a.seed}) x {a.draws} draws, sampled in {sample_s:.0f} s")
    print(f"{'parameter':<10}{'r':>8}   95 % bootstrap interval")
    for i, name in enumerate(PARAM_NAMES):
        r = float(pearson(mean[:, i], truth[:, i]))
        ci = stats.bootstrap((mean[:, i], truth[:, i]), pearson, paired=True, vectorized=True, n_resamples=2000,
                             random_state=np.random.default_rng(0)).confidence_interval
        out["r"][name] = {"r": r, "ci95": [float(ci.low), float(ci.high)]}
        print(f"{name:<10}{r:8.4f}   [{ci.low:.4f}, {ci.high:.4f}]")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
