"""Where a run's SBC fails: the test traces whose true parameter lies below or above all posterior draws, and how near a prior bound.

    KERAS_BACKEND=torch .venv/bin/python bench/sbc_extremes.py RUN_DIR

The log-gamma SBC test (BayesFlow's `calibration_log_gamma`) is most sensitive at the ends of the
rank ECDF, where its bands are narrowest: with S draws a calibrated posterior puts the truth below
all of them for 1 / (S + 1) of the traces. This draws the run's own test traces again (its
diagnostics seed, stimulus, prior and noise; the same draws as its report) and prints, per
parameter, how many truths rank 0 and S, how many a calibrated posterior would give, and for each
such trace its truth's distance from the nearer prior bound. Nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402,F401  (before TensorFlow, which Keras may load)

from lif_sbi import quiet  # noqa: E402

quiet.libraries()
with quiet.startup_lines():
    from lif_sbi import estimator, load  # noqa: E402
    from lif_sbi.errors import InputError  # noqa: E402
    from lif_sbi.priors import DISPLAY_SCALE, HIGH, LOW, PARAMETERS  # noqa: E402
    from lif_sbi.runner import fresh_test_set  # noqa: E402


def extremes(theta: np.ndarray, draws: np.ndarray) -> list[dict]:
    """Per parameter: the test traces (index) whose truth theta (N, 6) lies below all draws (N, S, 6),
    those above all, and each one's distance from the nearer prior bound in display units."""
    out = []
    for p, par in enumerate(PARAMETERS):
        below = np.nonzero((draws[:, :, p] > theta[:, None, p]).all(axis=1))[0]
        above = np.nonzero((draws[:, :, p] < theta[:, None, p]).all(axis=1))[0]
        edge = np.minimum(theta[:, p] - LOW[p], HIGH[p] - theta[:, p]) * DISPLAY_SCALE[p]
        out.append({"name": par.name, "unit": par.display_unit, "below": [(int(i), float(edge[i])) for i in below],
                    "above": [(int(i), float(edge[i])) for i in above]})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    args = p.parse_args(argv)
    try:
        post = load(args.run_dir)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cfg = post.config
    diag = cfg.diagnostics
    test, observed = fresh_test_set(cfg)  # the run's own test set, as its report drew it
    draws = estimator.sample_posterior(post.approximator, observed, diag.n_draws, seed=diag.seed, width_scale=post.width_scale,
                                       current=test["current"], prior=cfg.prior.kind, dt_s=cfg.stimulus.dt_s)
    expected = diag.n_test / (diag.n_draws + 1)
    print(f"{diag.n_test} test traces x {diag.n_draws} draws: a calibrated posterior puts {expected:.1f} truths below all draws "
          f"and {expected:.1f} above all, per parameter")
    for row in extremes(test["parameters"].astype(np.float64), draws):
        for side in ("below", "above"):
            near = ", ".join(f"{d:.3g}" for _, d in row[side])
            print(f"{row['name']:6s} {side} all draws: {len(row[side])}" + (f" (from the nearer bound, {row['unit']}: {near})" if near else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
