"""Time `python -m lif_sbi.infer` on N simulated traces of a run's own set-up, in one call.

    KERAS_BACKEND=torch .venv/bin/python bench/infer_speed.py RUN_DIR --n 300

Simulates N noisy traces (and their currents) as a user's .npz in mV and pA, runs the command on
them once, and prints its own line (sampling time per trace, the check's false-alarm rate), the
whole command's wall time and how many traces the check refused (expected: about the run's
false-alarm rate).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a finished run folder")
    p.add_argument("--n", type=int, default=300, help="traces (default 300)")
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--seed", type=int, default=99)
    args = p.parse_args(argv)
    from lif_sbi import dataset, infer, noise, priors
    from lif_sbi.config import load_config

    cfg = load_config(str(Path(args.run) / "config.toml"))
    priors.set_box(cfg.prior.bounds())
    d = dataset.simulate_dataset(args.n, args.seed, progress=False, stimulus_spec=cfg.stimulus, prior=cfg.prior.kind)
    v = noise.add_noise(d["observables"], cfg.noise.sd_v, args.seed + 1)[:, :, 0]
    with tempfile.TemporaryDirectory() as tmp:
        traces = Path(tmp) / "traces.npz"
        np.savez(traces, voltage=v * 1e3, current=d["current"] * 1e12, dt_s=cfg.stimulus.dt_s)
        t0 = time.perf_counter()
        code = infer.main([args.run, str(traces), "--units", "mV", "--current-units", "pA", "--draws", str(args.draws),
                           "--out", str(Path(tmp) / "out"), "--seed", str(args.seed)])
        wall = time.perf_counter() - t0
    print(f"infer_speed: {args.n} traces, whole command {wall:.1f} s in process (exit {code})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
