"""Width calibration with one factor vs factors by level, on trained runs' own validation and test traces.

For each run folder given (a `default`-style run with model.keras), refits the width calibration
on the run's first 1,000 validation traces x 500 draws exactly as `lif_sbi.train` does, once with
one factor per parameter (`tail_dfs=(inf,)`, the fit before 2026-11-26) and once with factors by
level (`lif_sbi.calibration.TAIL_DFS`, the present fit), then samples `--n-test` fresh test
traces (the run's diagnostics seed) x 1,000 draws confined to the prior, as the run's diagnostics
do, under each, and prints per parameter: 50 % and 90 % coverage, the largest |coverage - level|
over the levels 5..95 %, and SBC's log-gamma (pass > 0). The figures in bench/RESULTS.md
("Width calibration by level") came from, on the 2-core CPU:

    KERAS_BACKEND=torch .venv/bin/python bench/calibration_by_level.py results/default_torch_* --n-test 1000 --json /tmp/cal.jsonl
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from lif_sbi import quiet

quiet.libraries()  # no per-call tqdm bars from BayesFlow, before it loads

from lif_sbi import calibration, dataset, diagnostics, estimator  # noqa: E402
from lif_sbi.config import load_config  # noqa: E402
from lif_sbi.priors import PARAM_NAMES  # noqa: E402
from lif_sbi.runner import CALIBRATION_DRAWS, CALIBRATION_TRACES  # noqa: E402


def evaluate(run: str, n_test: int, n_draws: int = 1000) -> dict:
    cfg = load_config(f"{run}/config.toml")
    approximator = estimator.load_approximator(f"{run}/model.keras")
    data, _, _ = dataset.load_or_simulate(cfg.data.n_traces, cfg.data.seed, progress=False)
    _, val = dataset.split(data, cfg.data.validation_fraction, cfg.data.seed)
    n_fit = min(CALIBRATION_TRACES, len(val["parameters"]))
    raw = estimator.sample_posterior(approximator, val["observables"][:n_fit], CALIBRATION_DRAWS, seed=cfg.training.seed, within_prior=False)
    records = {
        "as trained": None,
        "one factor": calibration.fit(approximator.adapter, raw, val["parameters"][:n_fit], tail_dfs=(np.inf,)),
        "by level": calibration.fit(approximator.adapter, raw, val["parameters"][:n_fit]),
    }
    test = dataset.simulate_dataset(n_test, cfg.diagnostics.seed, progress=False)
    truth = test["parameters"].astype(np.float64)
    out = {"run": run, "n_test": n_test, "variants": {}}
    for name, record in records.items():
        t0 = time.perf_counter()
        scale = None if record is None else calibration.factors(record)
        draws = estimator.sample_posterior(approximator, test["observables"], n_draws, seed=cfg.diagnostics.seed, width_scale=scale)
        m = diagnostics.compute_metrics(truth, draws, seed=cfg.diagnostics.seed)["parameters"]
        curve = np.stack([diagnostics.interval_coverage(truth, draws, lv) for lv in calibration.LEVELS])  # (L, 6)
        worst = np.abs(curve - calibration.LEVELS[:, None]).max(axis=0)
        out["variants"][name] = {
            p: {"cov50": m[p]["coverage_50"], "cov90": m[p]["coverage_90"], "max_err": float(worst[j]),
                "log_gamma": m[p]["log_gamma"], "factor": None if record is None else record["width_scale"][p],
                "tail_df": None if record is None else record["validation_coverage"][p].get("fitted_tail_df"),
                "applied": None if record is None else record["validation_coverage"][p]["applied"]}
            for j, p in enumerate(PARAM_NAMES)
        }
        out["variants"][name]["_seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run folders (results/<run_id>) with model.keras and config.toml")
    ap.add_argument("--n-test", type=int, default=1000, help="fresh test traces (default 1000)")
    ap.add_argument("--json", default=None, help="append one JSON line per run to this file")
    a = ap.parse_args(argv)
    for run in a.runs:
        res = evaluate(run, a.n_test)
        print(f"\n{run} ({a.n_test} test traces x 1,000 draws)")
        print(f"{'variant':<11}{'param':<7}{'cov50':>7}{'cov90':>7}{'max|err|':>9}{'logγ':>8}  factor")
        for name, per in res["variants"].items():
            for p in PARAM_NAMES:
                v = per[p]
                f = "" if v["factor"] is None else calibration.describe(v["factor"]) + ("" if v["applied"] else " (not applied)")
                if v["tail_df"] is not None and v["applied"]:
                    f += f", tails t{v['tail_df']:g}"
                print(f"{name:<11}{p:<7}{v['cov50']:>7.3f}{v['cov90']:>7.3f}{v['max_err']:>9.3f}{v['log_gamma']:>8.2f}  {f}")
        if a.json:
            with open(a.json, "a") as fh:
                fh.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
