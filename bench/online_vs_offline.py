"""Offline against online training data: two finished runs of one configuration side by side, and what a simulated batch costs next to a training step.

    KERAS_BACKEND=torch .venv/bin/python -m lif_sbi.train --results-dir /tmp/oo
    KERAS_BACKEND=torch .venv/bin/python -m lif_sbi.train --results-dir /tmp/oo --set data.mode=online
    KERAS_BACKEND=torch .venv/bin/python bench/online_vs_offline.py /tmp/oo/default_torch_A /tmp/oo/default_torch_B \
        -o results/online/cpu-default.md

The committed pair is results/showcase/cpu-default and results/showcase/cpu-default-online, compared
in results/online/cpu-default.md.

The two runs should differ only in `data.mode` and run back to back on one machine. The table
holds, for each: training wall time and steps, best validation loss (the same fixed validation
traces in both modes), recovery r per parameter, the range of 90 % coverage and SBC passes on the
fresh test traces. Then the cost of one online batch (simulate `batch_size` traces from the
prior and stimulus, add noise, run the adapter: `OnlineBatches.__getitem__`, the median of 50)
over the offline run's mean training step: the share of each online step spent simulating, and
so how many times costlier a simulator could be before simulating a batch takes as long as the
step it feeds.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
import tomllib
from pathlib import Path

from lif_sbi import quiet
from lif_sbi.priors import PARAM_NAMES
from results_table import run_id_of  # bench/, this script's folder


def _record(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config = tomllib.loads((run_dir / "config.toml").read_text())
    with open(run_dir / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    n_train = config["data"]["n_traces"] - round(config["data"]["n_traces"] * config["data"]["validation_fraction"])
    steps = len(rows) * -(-n_train // config["training"]["batch_size"])
    cov = [metrics["parameters"][p]["coverage_90"] for p in PARAM_NAMES]
    return {"run": run_id_of(run_dir), "mode": config["data"].get("mode", "offline"), "config": config, "steps": steps,
            "training_s": sum(float(r["wall_s"]) for r in rows), "best_val_loss": min(float(r["val_loss"]) for r in rows),
            "r": {p: metrics["parameters"][p]["r"] for p in PARAM_NAMES}, "coverage_90": (min(cov), max(cov)),
            "sbc": metrics["aggregate"]["sbc_n_pass"], "environment": json.loads((run_dir / "environment.json").read_text())}


def batch_cost_s(run_dir: Path, n: int = 50) -> float:
    """Median wall seconds of one online training batch of the run's configuration on this machine."""
    from lif_sbi import estimator, noise, online, priors
    from lif_sbi.config import load_config

    cfg = load_config(str(run_dir / "config.toml"))
    priors.set_box(cfg.prior.bounds())
    adapter = estimator.build_approximator(cfg.model).adapter
    keys = ("parameters", "observables", "current") if cfg.model.observe_current else ("parameters", "observables")
    fresh = noise.FreshNoise(cfg.noise.sd_v, seed=1) if cfg.noise.sd_v else None
    ds = online.OnlineBatches(n * cfg.training.batch_size, cfg.training.batch_size, adapter, seed=cfg.data.seed, keys=keys,
                              stimulus=cfg.stimulus, prior=cfg.prior.kind, device=cfg.data.device, noise=fresh)
    ds[0]  # Numba's kernel loaded, caches warm
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        ds[i]
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def table(off: dict, on: dict, batch_s: float) -> str:
    env = off["environment"]
    config_name, backend, stamp = off["run"].rsplit("_", 2)
    lines = [f"# `{config_name}`: offline against online training data", "",
             f"Two {backend} runs back to back on {env['device']} ({env['cpu_count']} CPU cores, {env['platform']}; "
             f"Keras {env['keras']}, BayesFlow {env['bayesflow']}), {stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}, differing only in "
             "`data.mode`; made by `bench/online_vs_offline.py` (its docstring gives the commands).", ""]
    head = "| data | run | training | steps | best validation loss | " + " | ".join(f"r {p}" for p in PARAM_NAMES) + " | 90 % coverage | SBC pass |"
    lines += [head, "|---|---|---:|---:|---:|" + "---:|" * len(PARAM_NAMES) + "---:|---:|"]
    for rec in (off, on):
        lines.append(f"| {rec['mode']} | {rec['run']} | {rec['training_s']:.0f} s | {rec['steps']} | {rec['best_val_loss']:.3f} | "
                     + " | ".join(f"{rec['r'][p]:.3f}" for p in PARAM_NAMES)
                     + f" | {rec['coverage_90'][0]:.2f}–{rec['coverage_90'][1]:.2f} | {rec['sbc']}/6 |")
    step_s = off["training_s"] / off["steps"]
    lines += ["", f"One online batch ({off['config']['training']['batch_size']} traces simulated, noise, adapter): "
              f"{batch_s * 1e3:.2f} ms, median of 50, against the offline run's mean training step of {step_s * 1e3:.1f} ms "
              f"(its training time over its steps, validation included): {batch_s / step_s:.1%} of a step. A simulator "
              f"{step_s / batch_s:.0f}x costlier per trace would take as long to make a batch as the step that uses it."]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("offline", type=Path, help="the finished offline run's folder")
    p.add_argument("online", type=Path, help="the finished online run's folder")
    p.add_argument("-o", "--output", type=Path, help="also write the markdown here")
    args = p.parse_args(argv)
    quiet.libraries()
    off, on = _record(args.offline), _record(args.online)
    if (off["mode"], on["mode"]) != ("offline", "online"):
        print(f"error: expected an offline then an online run; got {off['mode']} and {on['mode']}", file=sys.stderr)
        return 2
    text = table(off, on, batch_cost_s(args.offline))
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
