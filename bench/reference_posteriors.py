"""Exact reference posteriors by MCMC for fresh observations of a trained run's set-up, and the run's estimator against them by C2ST.

    KERAS_BACKEND=torch .venv/bin/python bench/reference_posteriors.py RUN_DIR \
        [--n-obs 10] [--runs 4] [--walkers 64] [--steps 8000] [--jobs 2] [--out results/reference-posteriors/noisy-steps]

RUN_DIR: a finished training run (its config.toml and model.keras) whose configuration has a
known current (`model.observe_current`), Gaussian recording noise (`noise.sd_v` > 0) and the
"ordered" prior: then p(x | theta, I) = prod_t N(x_t; V_t(theta, I), sd²) is exact and the
posterior has a density (lif_sbi.reference_posterior). For each of --n-obs fresh observations
(theta from the prior, a current from the configuration's protocols, simulated in float64, noise
added) it runs --runs independent emcee runs started from the estimator's draws spread three times
wider, checks them (split-R-hat, autocorrelation times, the C2ST between the runs' halves) and
compares 1,000 of the estimator's draws with 1,000 reference draws by C2ST (as sbibm does). Writes
observations.npz, draws.npz (reference and estimator draws), summary.json and summary.md into
--out. The simulator runs on one thread (Numba's threads only wait for each other at 64 traces).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import multiprocessing
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numba  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402  (before TensorFlow, which Keras may load)

from lif_sbi import quiet  # noqa: E402

quiet.libraries()
with quiet.startup_lines():
    from lif_sbi import calibration, estimator, reference_posterior as rp  # noqa: E402
    from lif_sbi.config import ConfigError, load_config  # noqa: E402
    from lif_sbi.diagnostics.metrics import c2st_accuracy  # noqa: E402
    from lif_sbi.files import atomic_save_npz, atomic_write_json, atomic_write_text  # noqa: E402
    from lif_sbi.priors import PARAM_NAMES, PARAMETERS, sample_prior  # noqa: E402
    from lif_sbi.simulator import simulate  # noqa: E402
    from lif_sbi.stimulus import sample_stimulus  # noqa: E402

START_DRAWS = 2000  # estimator draws per observation that the walkers start from
N_DRAWS = 1000  # default draws per posterior compared by C2ST (sbibm uses 10,000)
SEED = 2024


def observations(cfg, n: int, seed: int) -> dict:
    """n fresh observations of the configuration's set-up: theta (n, 6) SI, current (n, T) A,
    clean voltage (n, T) V (float64 simulator) and the observed trace = clean + N(0, sd²)."""
    theta = sample_prior(n, seed, kind=cfg.prior.kind)
    gen = torch.Generator().manual_seed(seed)
    current, _ = sample_stimulus(n, gen, cfg.stimulus)
    clean = simulate(theta, current, cfg.stimulus.dt_s, dtype=torch.float64).numpy()
    noisy = clean + np.random.default_rng(seed + 1).normal(0.0, cfg.noise.sd_v, size=clean.shape)
    return {"theta": theta, "current": current.numpy(), "clean": clean, "trace": noisy}


def check_run(run_dir: Path):
    """The run's configuration, or a one-line reason why its set-up has no exact reference posterior."""
    if not (run_dir / "config.toml").is_file() or not (run_dir / "model.keras").is_file():
        raise ConfigError(f"{run_dir}: expected a finished run folder holding config.toml and model.keras")
    cfg = load_config(str(run_dir / "config.toml"))
    if not (cfg.model.observe_current and cfg.noise.sd_v > 0 and cfg.prior.kind == rp.PRIOR):
        raise ConfigError(f"{run_dir}: its configuration has no exact likelihood; expected model.observe_current = true, "
                          f"noise.sd_v > 0 and prior.kind = {rp.PRIOR!r} (e.g. configs/noisy_steps.toml)")
    return cfg


def summary_lines(rows: list[dict], args, cfg, machine: str, date: str) -> list[str]:
    """summary.md: what was computed, how, and per observation the convergence and C2ST figures."""
    acc = [r for r in rows if r["accepted"]]
    c2 = np.array([r["c2st_estimator"] for r in acc]) if acc else np.array([np.nan])
    lines = [
        "# Reference posteriors and the estimator's C2ST against them", "",
        f"Command: `KERAS_BACKEND=torch .venv/bin/python bench/reference_posteriors.py RUN_DIR --n-obs {args.n_obs} "
        f"--runs {args.runs} --walkers {args.walkers} --steps {args.steps} --draws {args.draws}` with RUN_DIR a `{cfg.name}` run; "
        f"machine: {machine}; {date}.", "",
        f"Exact likelihood (known current, Gaussian noise sd {cfg.noise.sd_v * 1e3:g} mV), the \"ordered\" prior; per observation "
        f"{args.runs} independent emcee runs of {args.walkers} walkers x {args.steps} steps (first half burn-in), started from the "
        f"estimator's draws spread {rp.START_SPREAD:g}x wider. A reference counts when split-R-hat over the runs <= {rp.RHAT_MAX} for every "
        f"parameter, no walker's mean lies more than {rp.WALKER_Z_MAX:g} posterior sd from the pooled mean, the kept chain is >= {rp.MIN_CHAIN_TAUS} autocorrelation times long and a C2ST between the first and second "
        f"half of the runs gives <= {rp.RUNS_C2ST_MAX}. C2ST: BayesFlow's classifier two-sample test, 5-fold, {args.draws} vs {args.draws} draws.", "",
        f"**{len(acc)} of {len(rows)} references accepted; estimator vs reference C2ST accuracy {np.mean(c2):.3f} "
        f"(mean over accepted; min {np.min(c2):.3f}, max {np.max(c2):.3f}).**", "",
        "| obs | accepted | max R-hat | farthest walker (sd) | max tau (steps) | min ESS | C2ST runs | C2ST estimator | MCMC s (one core) |",
        "|---:|:---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['obs']} | {'yes' if r['accepted'] else 'no'} | {max(r['rhat']):.4f} | {r['walker_z']:.2f} | {max(r['tau']):.0f} | "
                     f"{min(r['ess']):.0f} | {r['c2st_between_runs']:.3f} | {r['c2st_estimator']:.3f} | {r['seconds']:.0f} |")
    return lines + [""]


def one_observation(job: dict) -> tuple[dict, np.ndarray]:
    """The reference posterior of one observation and the estimator's C2ST against it: (summary
    row, reference draws (draws, 6) SI). Runs on one thread."""
    numba.set_num_threads(1)
    torch.set_num_threads(1)
    i, t0 = job["obs"], time.perf_counter()
    res = rp.reference_posterior(job["trace"], job["current"], job["dt_s"], job["sd_v"], job["start"],
                                 n_runs=job["runs"], n_walkers=job["walkers"], n_steps=job["steps"], n_draws=job["draws"],
                                 seed=job["seed"] + 100 * i, c2st=lambda a, b: c2st_accuracy(a, b, seed=job["seed"] + i))
    ref = res.pop("draws")
    res["c2st_estimator"] = c2st_accuracy(job["estimator"], ref, seed=job["seed"] + i)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    row = {"obs": i, **{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in res.items()}}
    print(f"obs {i}: accepted {row['accepted']}, R-hat <= {max(row['rhat']):.4f}, C2ST runs {row['c2st_between_runs']:.3f}, "
          f"estimator {row['c2st_estimator']:.3f} ({row['wall_s']:.0f} s)", flush=True)
    return row, ref


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--n-obs", type=int, default=10)
    p.add_argument("--runs", type=int, default=4)
    p.add_argument("--walkers", type=int, default=64)
    p.add_argument("--steps", type=int, default=8000)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "reference-posteriors" / "noisy-steps")
    p.add_argument("--draws", type=int, default=N_DRAWS, help="draws per posterior compared by C2ST")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--jobs", type=int, default=2, help="observations run at once, one process each (default 2: the 2-core CPU)")
    args = p.parse_args(argv)
    try:
        cfg = check_run(args.run_dir)
        if min(args.n_obs, args.runs - 1, args.walkers - 13, args.steps - 99, args.draws - 19, args.jobs) < 1:
            raise ConfigError("expected --n-obs >= 1, --runs >= 2, --walkers >= 14, --steps >= 100, --draws >= 20 and --jobs >= 1")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    numba.set_num_threads(1)
    obs = observations(cfg, args.n_obs, args.seed)
    approx = estimator.load_approximator(args.run_dir / "model.keras")
    scale = calibration.load_for(args.run_dir / "model.keras")
    kw = dict(current=obs["current"], prior=cfg.prior.kind, width_scale=scale, dt_s=cfg.stimulus.dt_s)
    start = estimator.sample_posterior(approx, obs["trace"], START_DRAWS, seed=args.seed, **kw)
    est = estimator.sample_posterior(approx, obs["trace"], args.draws, seed=args.seed + 1, **kw)
    jobs = [{"obs": i, "trace": obs["trace"][i], "current": obs["current"][i], "dt_s": cfg.stimulus.dt_s, "sd_v": cfg.noise.sd_v,
             "start": start[i], "estimator": est[i], "runs": args.runs, "walkers": args.walkers, "steps": args.steps,
             "draws": args.draws, "seed": args.seed} for i in range(args.n_obs)]
    if args.jobs > 1:  # one observation per process: the MCMC is one thread of Python and Numba
        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            done = list(pool.map(one_observation, jobs))
    else:
        done = [one_observation(job) for job in jobs]
    rows = [row for row, _ in done]
    refs = np.stack([ref for _, ref in done])
    machine = f"{platform.machine()} CPU, {os.cpu_count()} cores, {args.jobs} observation(s) at a time"
    date = datetime.date.today().isoformat()
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_save_npz(args.out / "observations.npz", **obs)
    atomic_save_npz(args.out / "draws.npz", reference=refs.astype(np.float32), estimator=est.astype(np.float32), names=np.array(PARAM_NAMES))  # float32: half the size, far finer than any posterior sd
    accepted = [r["c2st_estimator"] for r in rows if r["accepted"]]
    atomic_write_json(args.out / "summary.json", {
        "config": cfg.name, "run": str(args.run_dir), "run_id": args.run_dir.resolve().name, "machine": machine, "date": date, "n_draws": args.draws,
        "settings": {"runs": args.runs, "walkers": args.walkers, "steps": args.steps, "seed": args.seed},
        "units": {p.name: p.unit for p in PARAMETERS},
        "accepted": len(accepted), "c2st_estimator_mean": float(np.mean(accepted)) if accepted else None, "observations": rows})
    atomic_write_text(args.out / "summary.md", "\n".join(summary_lines(rows, args, cfg, machine, date)))
    print(f"{len(accepted)} of {len(rows)} references accepted; estimator C2ST {np.mean(accepted) if accepted else float('nan'):.3f}; "
          f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
