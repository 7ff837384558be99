"""Level 2, independent training → equivalent posteriors: the trained models' posteriors compared on the same fresh test traces."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np

from ..priors import DISPLAY_SCALE, N_PARAMS, PARAM_NAMES
from .checks import Check, _fmt, _le
from .thresholds import Thresholds
from .workers import run_worker

C2ST_SEED = 7


# ---------------------------------------------------------------------------------------------
# Parent side (NumPy only)


def level2(backend: str, test: Path, draws: dict[str, Path], th: Thresholds, size: str, n_test: int, n_draws: int,
           c2st_splits: int | None, info: dict, say) -> list[Check]:
    """Level 2 for the models whose posterior draws on the test traces `test` are in `draws`
    (label → evaluation .npz), computed under `backend`; its figures go to info["level2"]."""
    if len(draws) < 2:
        return [Check(2, "—", "skipped: only one Keras backend installed", None, None, "", True)]
    t0 = time.perf_counter()
    say("level 2: metrics, SBC and C2ST ...")
    splits = c2st_splits or (2 if size == "smoke" else 5)
    ans = run_worker(backend, "compare_posteriors", {
        "thresholds": dataclasses.asdict(th), "test": str(test), "c2st_splits": splits,
        "draws": {m: str(path) for m, path in draws.items()}, "n_c2st": th.c2st_min_traces,
    })
    info["timings_s"]["level 2 figures"] = round(time.perf_counter() - t0, 1)
    info["level2"] = ans
    return level2_checks(ans, th, n_test, n_draws)


def level2_checks(ans: dict, th: Thresholds, n_test: int, n_draws: int) -> list[Check]:
    checks = []
    per = ans["per_backend"]
    for pair, res in ans["pairs"].items():
        a, b = pair.split("|")
        comp = f"{a} vs {b}"
        for p in PARAM_NAMES:
            ra, rb = per[a][p]["r"], per[b][p]["r"]
            diff = abs(ra - rb) if ra is not None and rb is not None else None
            checks.append(_le(2, comp, f"{p}: |Δ Pearson r|", diff, th.r_abs_diff,
                              f"r = {_fmt(ra) if ra is not None else 'n/a'} vs {_fmt(rb) if rb is not None else 'n/a'} ({n_test} traces)"))
        for p in PARAM_NAMES:
            pa, pb = per[a][p], per[b][p]
            either = pa["sbc_pass"] or pb["sbc_pass"]
            both_corr = pa["sbc_pass_corrected"] and pb["sbc_pass_corrected"]
            note = (f"log γ (5 %) = {_fmt(pa['log_gamma'])} vs {_fmt(pb['log_gamma'])}; "
                    f"at α = {ans['sbc_alpha_corrected']:.2g}: {_fmt(pa['log_gamma_corrected'])} vs {_fmt(pb['log_gamma_corrected'])}")
            if either:
                ok = both_corr
                fig = min(pa["log_gamma_corrected"], pb["log_gamma_corrected"])
                checks.append(Check(2, comp, f"{p}: SBC, min log γ at corrected α (either passes at 5 %)", fig, 0.0, ">", ok, note))
            else:
                checks.append(Check(2, comp, f"{p}: SBC fails at 5 % under both (no constraint)", None, None, "", True, note))
        accs = np.asarray(res["c2st"])
        ok_n = len(accs) >= th.c2st_min_traces
        checks.append(Check(2, comp, f"C2ST accuracy, mean over {len(accs)} test traces", float(accs.mean()), th.c2st_accuracy, "≤",
                            bool(ok_n and accs.mean() <= th.c2st_accuracy),
                            f"min {accs.min():.3f}, max {accs.max():.3f}; {n_draws} vs {n_draws} draws per trace"
                            + ("" if ok_n else f"; needs ≥ {th.c2st_min_traces} traces")))
    return checks


def separation(a: np.ndarray, b: np.ndarray) -> dict[str, dict[str, float]]:
    """Where two posteriors differ, per parameter: draws a, b (traces, draws, 6) of the same traces.

    For each parameter, over the traces: the mean two-sample Kolmogorov-Smirnov distance (SciPy;
    for independent draws of identical posteriors about 0.87/√(n_a n_b/(n_a + n_b)), see
    `ks_null_mean`; draws one backend made from the same seed share their base draws and can fall
    below it), the mean |Δ posterior mean| in pooled posterior sds, and the median ratio of
    posterior sds a/b. The C2ST gives one accuracy for all six parameters; these say which of them
    the classifier can use.
    """
    from scipy import stats

    out = {}
    for j, p in enumerate(PARAM_NAMES):
        x, y = a[:, :, j].astype(np.float64), b[:, :, j].astype(np.float64)
        sd_x, sd_y = x.std(axis=1), y.std(axis=1)
        pooled = np.sqrt(0.5 * (sd_x**2 + sd_y**2))
        ok = pooled > 0
        out[p] = {
            "ks_mean": float(np.mean([stats.ks_2samp(x[k], y[k]).statistic for k in range(len(x))])),
            "mean_shift_sd": float(np.mean(np.abs(x.mean(axis=1) - y.mean(axis=1))[ok] / pooled[ok])) if ok.any() else float("nan"),
            "sd_ratio_median": float(np.median(sd_x[ok] / np.where(sd_y[ok] > 0, sd_y[ok], np.nan))) if ok.any() else float("nan"),
        }
    return out


def ks_null_mean(n_a: int, n_b: int) -> float:
    """The mean two-sample KS distance between samples of n_a and n_b draws of one distribution
    (Kolmogorov's limit: E sup|B| = √(π/2)·ln 2 ≈ 0.8687, over √(n_a n_b / (n_a + n_b)))."""
    return math.sqrt(math.pi / 2) * math.log(2) / math.sqrt(n_a * n_b / (n_a + n_b))


# ---------------------------------------------------------------------------------------------
# Worker side (imports Keras)


def task_compare_posteriors(args: dict) -> dict:
    """Worker task `compare_posteriors`: level 2 figures for every backend's draws on the same test
    traces (metrics, SBC, C2ST)."""
    import bayesflow as bf

    from .. import diagnostics
    from ..diagnostics.metrics import c2st_accuracy

    th = Thresholds(**args["thresholds"])
    with np.load(args["test"]) as f:
        theta = f["parameters"].astype(np.float64)
    draws = {}
    for b, path in args["draws"].items():
        with np.load(path) as f:
            draws[b] = f["posterior_draws"]
    alpha = th.sbc_family_alpha / (2 * N_PARAMS)
    out: dict = {"per_backend": {}, "pairs": {}, "sbc_alpha_corrected": alpha}
    for b, d in draws.items():
        m = diagnostics.compute_metrics(theta, d, seed=0)
        np.random.seed(1)
        lg = bf.diagnostics.metrics.calibration_log_gamma(
            d * DISPLAY_SCALE, theta * DISPLAY_SCALE, variable_names=list(PARAM_NAMES), num_null_draws=4000, quantile=alpha
        )["values"]
        out["per_backend"][b] = {
            p: {"r": m["parameters"][p]["r"], "log_gamma": m["parameters"][p]["log_gamma"],
                "sbc_pass": bool(m["parameters"][p]["sbc_pass"]),
                "log_gamma_corrected": float(max(lg[i], diagnostics.LOG_GAMMA_FLOOR)),
                "sbc_pass_corrected": bool(lg[i] > 0)}
            for i, p in enumerate(PARAM_NAMES)
        }
    names = list(draws)
    n_c2st = min(len(theta), max(th.c2st_min_traces, int(args.get("n_c2st", th.c2st_min_traces))))
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            accs = []
            t0 = time.perf_counter()
            for k in range(n_c2st):
                accs.append(c2st_accuracy(draws[a][k], draws[b][k], C2ST_SEED + k, splits=int(args.get("c2st_splits", 5))))
            out["pairs"][f"{a}|{b}"] = {"c2st": accs, "c2st_s": round(time.perf_counter() - t0, 1),
                                        "separation": separation(draws[a][:n_c2st], draws[b][:n_c2st])}
    return out
