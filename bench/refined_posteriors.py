"""A run's posteriors refined by importance sampling with the exact likelihood, against the committed MCMC reference posteriors by C2ST.

    KERAS_BACKEND=torch .venv/bin/python bench/refined_posteriors.py RUN_DIR \
        [--refs results/reference-posteriors/noisy-steps] [--n-proposal 20000] [--seed 7]

RUN_DIR: a finished run of the configuration the references were made for (their summary.json
names it). For every observation in REFS/observations.npz whose reference was accepted, draws
from the run's estimator as trained, and refined (`lif_sbi.refine`), as many as REFS/draws.npz
holds reference draws (1,000), and compares each with them by C2ST (BayesFlow's classifier
two-sample test, 5-fold, as bench/reference_posteriors.py does). Writes REFS/refined.json and REFS/refined.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402,F401  (before TensorFlow, which Keras may load)

from lif_sbi import quiet  # noqa: E402

quiet.libraries()
with quiet.startup_lines():
    from lif_sbi import load, refine  # noqa: E402
    from lif_sbi.diagnostics.metrics import c2st_accuracy  # noqa: E402
    from lif_sbi.errors import InputError  # noqa: E402
    from lif_sbi.files import atomic_write_json, atomic_write_text  # noqa: E402

REFS = ROOT / "results" / "reference-posteriors" / "noisy-steps"


def summary_lines(rows, args, summary, machine, date, run_id, n_draws) -> list[str]:
    est = [r["c2st_estimator"] for r in rows]
    ref = [r["c2st_refined"] for r in rows]
    lines = [
        "# Refined posteriors against the MCMC references",
        "",
        f"Command: `KERAS_BACKEND=torch .venv/bin/python bench/refined_posteriors.py RUN_DIR --refs {args.refs.relative_to(ROOT) if args.refs.is_relative_to(ROOT) else args.refs} "
        f"--n-proposal {args.n_proposal} --seed {args.seed}` with RUN_DIR a `{summary['config']}` run (run id {run_id}); machine: {machine}; {date}.",
        "",
        f"The {len(rows)} accepted reference posteriors of [summary.md](summary.md). Per observation: {n_draws:,} draws of the run's "
        f"estimator as trained (drawn afresh: not summary.md's), and {n_draws:,} refined draws (`lif_sbi.refine`: "
        f"{refine.N_FLOW:,} of the estimator's draws weighted by the exact likelihood, then population Monte Carlo rounds of "
        f"{args.n_proposal:,} Student-t draws until the effective sample size reaches {refine.MIN_ESS:,}), each against the "
        f"{n_draws:,} reference draws by C2ST (5-fold; 0.5: indistinguishable).",
        "",
        f"**C2ST accuracy against the references: estimator {np.mean(est):.3f} (min {min(est):.3f}, max {max(est):.3f}); "
        f"refined {np.mean(ref):.3f} (min {min(ref):.3f}, max {max(ref):.3f}).** "
        f"Refining took {np.median([r['refine_s'] for r in rows]):.1f} s per observation (median).",
        "",
        "| obs | C2ST estimator | C2ST refined | ESS of the estimator's draws | rounds | final ESS | residual rms / noise sd | refine s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['obs']} | {r['c2st_estimator']:.3f} | {r['c2st_refined']:.3f} | {r['ess_flow']:.1f} of {r['n_flow']} | "
                     f"{r['rounds']} | {r['ess']:.0f} | {r['residual_ratio']:.3f} | {r['refine_s']:.1f} |")
    return lines + [""]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--refs", type=Path, default=REFS, help="a folder written by bench/reference_posteriors.py")
    p.add_argument("--n-proposal", type=int, default=refine.N_PROPOSAL)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    try:
        missing = [f for f in ("observations.npz", "draws.npz", "summary.json") if not (args.refs / f).is_file()]
        if missing:
            raise InputError(f"{args.refs}: no {', '.join(missing)}: expected a folder written by bench/reference_posteriors.py")
        summary = json.loads((args.refs / "summary.json").read_text())
        post = load(args.run_dir)
        if post.config.name != summary["config"]:
            raise InputError(f"{args.run_dir}: a {post.config.name!r} run; the references are for {summary['config']!r}")
        if args.n_proposal < 100:
            raise InputError(f"--n-proposal must be at least 100; got {args.n_proposal}")
        if not any(row["accepted"] for row in summary["observations"]):
            raise InputError(f"{args.refs}: no reference was accepted (summary.md says why): nothing to compare with")
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    obs = np.load(args.refs / "observations.npz")
    refs = np.load(args.refs / "draws.npz")["reference"].astype(np.float64)
    n_draws = refs.shape[1]  # as many estimator and refined draws as reference draws
    rows = []
    for row in summary["observations"]:
        if not row["accepted"]:
            continue
        i = row["obs"]
        trace, current = obs["trace"][i], obs["current"][i]
        est = post.sample(trace, n_draws, current=current[None], seed=args.seed + i)[0]
        t0 = time.perf_counter()
        res = refine.refine(post, trace, current, n=n_draws, n_proposal=args.n_proposal, seed=args.seed + i)
        took = time.perf_counter() - t0
        out = {"obs": i, "c2st_estimator": c2st_accuracy(est, refs[i], seed=args.seed + i),
               "c2st_refined": c2st_accuracy(res.draws, refs[i], seed=args.seed + i), "ess_flow": res.ess_flow,
               "n_flow": res.n_flow, "n_proposal": res.n_proposal, "rounds": res.rounds, "ess": res.ess, "converged": res.converged,
               "residual_ratio": res.residual_ratio, "refine_s": round(took, 2)}
        rows.append(out)
        print(f"obs {i}: C2ST estimator {out['c2st_estimator']:.3f}, refined {out['c2st_refined']:.3f} "
              f"(ESS {res.ess_flow:.1f} -> {res.ess:.0f} in {res.rounds} rounds, {took:.1f} s)", flush=True)
    machine = f"{platform.machine()} CPU, {os.cpu_count()} cores"
    date = datetime.date.today().isoformat()
    run_id = args.run_dir.resolve().name
    atomic_write_json(args.refs / "refined.json", {"config": summary["config"], "run_id": run_id, "machine": machine, "date": date,
                                                   "n_proposal": args.n_proposal, "seed": args.seed, "min_ess": refine.MIN_ESS,
                                                   "c2st_estimator_mean": float(np.mean([r["c2st_estimator"] for r in rows])),
                                                   "c2st_refined_mean": float(np.mean([r["c2st_refined"] for r in rows])),
                                                   "observations": rows})
    atomic_write_text(args.refs / "refined.md", "\n".join(summary_lines(rows, args, summary, machine, date, run_id, n_draws)))
    print(f"written to {args.refs}/refined.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
