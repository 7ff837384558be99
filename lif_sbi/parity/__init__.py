"""Backend parity: one model definition, any Keras backend, the same answer.

`python -m lif_sbi.parity [--config NAME] [--results-dir DIR]` checks, for every installed Keras
backend (torch, tensorflow, jax), and writes `results/<run_id>/parity.md`:

- Level 1, same weights → same numbers (`same_weights`). The configuration is trained once under
  each backend and saved; every saved model is loaded under every backend (one subprocess per
  backend: Keras reads KERAS_BACKEND once per process) and evaluated on one fixed batch of traces,
  parameters and base-distribution draws z shared through an .npz file: summary-network outputs,
  posterior log-density, posterior draws made from the same z, and the gradients of one training
  step (the training loss w.r.t. every trainable variable, dropout off). The backend that saved the
  model is the reference; every other backend must reproduce it. A backend loading its own save
  is checked too (sanity): two loads agree, and the hand-made z → θ path equals BayesFlow's own
  sampling path when the base distribution is made to return z.
- Level 2, independent training → equivalent posteriors (`retraining`, `equivalence`). K models
  per backend, differing only in training.seed, draw posteriors on the same fresh test traces;
  every pair's discrepancies (C2ST, and per parameter mean shift, KS distance, |Δr|, sd ratio, SBC
  ranks) are compared across backends against within a backend, as an equivalence test with a
  hierarchical bootstrap, a power check (synthetic shifts) and an optional negative control.
- Level 3, simulator CPU vs CUDA, where CUDA exists (`simulator`).

Every threshold lives in `THRESHOLDS` and `LEVEL2` (`thresholds`). Exit code 0 when every check passes, 1 when
any fails (each failure is listed with its numbers), 2 for bad arguments, 4 for a file that cannot be
written or read (one line each).

Internals: the parent process never imports Keras; all Keras work happens in worker subprocesses
(`python -m lif_sbi.parity _worker TASK JSON`, `workers`), each printing one JSON line last.
`run` carries out one parity run, `report` writes its parity.md and parity.json, `cli` is the
command line.
"""

from ..config import load_config
from ..priors import HIGH, LOW
from .checks import Check, _fmt, _le
from .cli import main, parse_args
from .report import write_report
from . import equivalence
from .run import ParityRun, new_run_dir, run_parity
from .same_weights import compare_level1, draws_from_base, level1_numbers, load_npz, training_gradients
from .simulator import _spike_trains, level3
from .thresholds import LEVEL2, THRESHOLDS, Level2, Thresholds, size_of
from .workers import KNOWN_BACKENDS, ParityError, installed_backends, run_worker, train, worker_env

__all__ = [
    "HIGH", "KNOWN_BACKENDS", "LEVEL2", "LOW", "Level2", "THRESHOLDS", "Check", "equivalence", "ParityError", "ParityRun", "Thresholds",
    "_fmt", "_le", "_spike_trains", "compare_level1", "draws_from_base", "installed_backends",
    "level1_numbers", "level3", "load_config", "load_npz", "main", "new_run_dir", "parse_args",
    "run_parity", "run_worker", "size_of", "train", "training_gradients", "worker_env", "write_report",
]
