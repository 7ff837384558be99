"""Backend parity (lif_sbi.parity): same weights → same numbers; independent training → equivalent posteriors.

The module fixture runs the whole ci-sized parity check once (trains `ci` under torch and under
tensorflow, evaluates every save under every backend, compares the posteriors); the tests read its
checks. Every backend runs in its own subprocess (Keras reads KERAS_BACKEND once per process).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from lif_sbi import parity

BACKENDS = ["torch", "tensorflow"]
HAVE_BOTH = set(BACKENDS) <= set(parity.installed_backends())
needs_both = pytest.mark.skipif(not HAVE_BOTH, reason="needs both the torch and the tensorflow Keras backends")


def _rows(checks) -> str:
    return "\n".join(c.row() for c in checks)


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory):
    if not HAVE_BOTH:
        pytest.skip("needs both the torch and the tensorflow Keras backends")
    run = parity.run_parity("ci", [], tmp_path_factory.mktemp("parity"), backends=BACKENDS, say=lambda *a: None)
    parity.write_report(run)
    return run


# ------------------------------------------------------------------------------- level 1


@needs_both
@pytest.mark.torch
@pytest.mark.tensorflow
@pytest.mark.parametrize("direction", ["torch → tensorflow", "tensorflow → torch"])
def test_level1_same_weights_same_numbers(ci_run, direction):
    checks = [c for c in ci_run.checks if c.level == 1 and c.comparison == direction]
    quantities = " ".join(c.quantity for c in checks)
    assert len(checks) == 4 and "summary" in quantities and "log p" in quantities and "same z" in quantities, _rows(checks)
    assert "training gradients" in quantities, _rows(checks)
    assert all(c.passed for c in checks), _rows(checks)
    th = parity.THRESHOLDS["full"]
    assert [c.threshold for c in checks] == [th.summary_rel, th.log_prob_rel, th.draws_rel, th.gradient_rel]


@needs_both
@pytest.mark.torch
@pytest.mark.tensorflow
@pytest.mark.parametrize("backend", BACKENDS)
def test_level1_own_save_and_injected_base_draws(ci_run, backend):
    """Two loads of a backend's own save agree bit for bit, and the z-injected sampling path is
    BayesFlow's own `sample()` (with the base distribution made to return the same z)."""
    checks = [c for c in ci_run.checks if c.comparison == f"{backend} → {backend} (own save)"]
    assert len(checks) == 4, _rows(checks)
    assert all(c.passed for c in checks), _rows(checks)


@needs_both
@pytest.mark.torch
@pytest.mark.tensorflow
def test_parity_check_fails_for_a_perturbed_weight(ci_run, tmp_path):
    """Change one weight of the torch save; loading it under tensorflow must fail level 1, with numbers."""
    perturbed = tmp_path / "perturbed.keras"
    ans = parity.run_worker("torch", "perturb", {"model": str(ci_run.models["torch"]), "delta": 0.05, "out": str(perturbed)})
    assert "summary" in ans["variable"] or "kernel" in ans["variable"]
    out = tmp_path / "eval.npz"
    parity.run_worker("tensorflow", "evaluate", {"model": str(perturbed), "batch": str(ci_run.run_dir / "level1_batch.npz"), "out": str(out)})
    ref = parity.load_npz(ci_run.evals[("torch", "torch")])
    checks = parity.compare_level1(ref, parity.load_npz(out), "torch (perturbed) → tensorflow", parity.THRESHOLDS["full"])
    summary = checks[0]
    assert not summary.passed and summary.figure > 10 * summary.threshold, _rows(checks)
    assert "FAIL" in summary.row() and parity._fmt(summary.figure) in summary.row()


def test_compare_level1_on_synthetic_numbers():
    """The comparison itself: identical numbers pass, a drift beyond each threshold fails that check."""
    rng = np.random.default_rng(0)
    ref = {"summaries": rng.normal(size=(4, 8)), "log_prob": rng.normal(size=4) * 10,
           "draws": parity.LOW + (parity.HIGH - parity.LOW) * rng.uniform(size=(4, 5, 6))}
    th = parity.THRESHOLDS["full"]
    assert all(c.passed for c in parity.compare_level1(ref, ref, "a → a", th))
    for i, key, bump in [(0, "summaries", 1e-3), (1, "log_prob", 1e-2), (2, "draws", 1e-2 * (parity.HIGH - parity.LOW))]:
        cand = {k: v.copy() for k, v in ref.items()}
        cand[key][0] += bump
        checks = parity.compare_level1(ref, cand, "a → b", th)
        assert [c.passed for c in checks] == [j != i for j in range(3)], _rows(checks)
    nan = {k: v.copy() for k, v in ref.items()}
    nan["log_prob"][0] = np.nan
    assert not parity.compare_level1(ref, nan, "a → b", th)[1].passed
    # training gradients: compared per variable above the floor; one wrong variable fails
    grads = {"gradient_0": rng.normal(size=(5, 3)), "gradient_1": rng.normal(size=7) * 1e-3, "gradient_2": np.full(4, 1e-12)}
    same = parity.compare_level1(ref | grads, ref | grads, "a → a", th)
    assert len(same) == 4 and same[3].passed and same[3].figure == 0 and "2 of 3 variables" in same[3].note, _rows(same)
    wrong = grads | {"gradient_1": grads["gradient_1"] * 1.05, "gradient_2": np.full(4, 1e-10)}  # below the floor: ignored
    check = parity.compare_level1(ref | grads, ref | wrong, "a → b", th)[3]
    assert not check.passed and abs(check.figure - 0.05) < 1e-9 and "worst #1" in check.note, check.row()
    assert not parity.compare_level1(ref | grads, ref | {"gradient_0": grads["gradient_0"]}, "a → b", th)[3].passed  # missing variables


# ------------------------------------------------------------------------------- level 2


@needs_both
@pytest.mark.torch
@pytest.mark.tensorflow
def test_level2_ci_sized(ci_run):
    """Machinery and figures of level 2 at ci size, judged by the smoke thresholds (see THRESHOLDS)."""
    assert ci_run.size == "smoke"
    checks = [c for c in ci_run.checks if c.level == 2]
    assert sum("Pearson r" in c.quantity for c in checks) == 6
    assert sum("SBC" in c.quantity for c in checks) == 6
    c2st = [c for c in checks if "C2ST" in c.quantity]
    assert len(c2st) == 1 and 0.5 <= c2st[0].figure <= 1.0
    assert len(ci_run.info["level2"]["pairs"]["torch|tensorflow"]["c2st"]) >= parity.THRESHOLDS["smoke"].c2st_min_traces
    for c in checks:
        if c.figure is not None:
            assert math.isfinite(c.figure), c.row()
    assert all(c.passed for c in checks), _rows(checks)


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.tensorflow
@needs_both
def test_level2_full_size(tmp_path):
    """The promise at full size (configs/default.toml, hours on a 2-core CPU): every check passes."""
    name = os.environ.get("LIF_SBI_PARITY_CONFIG", "default")
    run = parity.run_parity(name, [], tmp_path, backends=BACKENDS, say=lambda *a: None)
    parity.write_report(run)
    assert run.size == "full" and run.passed, _rows([c for c in run.checks if not c.passed])


def test_separation_names_the_parameter_that_differs():
    """Per-parameter separation of two sets of draws: a 1-sd shift and a 2x width in one parameter
    each are found there; the other parameters sit at the KS distance of identical posteriors."""
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((20, 1000, 6)), rng.standard_normal((20, 1000, 6))
    b[:, :, 4] += 1.0  # V_res shifted by one sd
    b[:, :, 1] *= 2.0  # g_L twice as wide
    sep = parity.separation(a, b)
    null = parity.ks_null_mean(1000, 1000)
    assert abs(null - 0.0389) < 1e-3
    assert abs(sep["V_res"]["mean_shift_sd"] - 1.0) < 0.1 and abs(sep["V_res"]["ks_mean"] - 0.383) < 0.03
    assert abs(sep["g_L"]["sd_ratio_median"] - 0.5) < 0.02 and sep["g_L"]["ks_mean"] > 3 * null
    for p in ("C_m", "E_L", "V_th", "t_ref"):
        assert abs(sep[p]["ks_mean"] - null) < 0.01 and sep[p]["mean_shift_sd"] < 0.1 and abs(sep[p]["sd_ratio_median"] - 1) < 0.02


def test_report_cells_escape_bars():
    row = parity.Check(2, "torch vs tensorflow", "C_m: |Δ Pearson r|", 0.01, 0.02, "≤", True, "r = |x|").row()
    assert row.count("|") - row.count("\\|") == 8  # 7 cells
    assert "\\|Δ Pearson r\\|" in row


def test_thresholds_are_the_promised_ones():
    full = parity.THRESHOLDS["full"]
    assert (full.summary_rel, full.log_prob_rel, full.draws_rel) == (1e-5, 1e-4, 1e-3)
    assert (full.r_abs_diff, full.c2st_accuracy, full.c2st_min_traces) == (0.02, 0.60, 20)
    smoke = parity.THRESHOLDS["smoke"]
    assert (smoke.summary_rel, smoke.log_prob_rel, smoke.draws_rel) == (full.summary_rel, full.log_prob_rel, full.draws_rel)
    from lif_sbi.config import load_config

    assert parity.size_of(load_config("ci")) == "smoke"
    assert parity.size_of(load_config("default")) == "full"


# ------------------------------------------------------------------------------- level 3


@pytest.mark.gpu
def test_level3_simulator_cuda_matches_cpu():
    checks = parity.level3(parity.THRESHOLDS["full"])
    assert len(checks) == 3 and all(c.passed for c in checks), _rows(checks)


def test_level3_says_skipped_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present: level 3 runs (test_level3_simulator_cuda_matches_cpu)")
    (check,) = parity.level3(parity.THRESHOLDS["full"])
    assert check.passed and "skipped: no CUDA device" in check.quantity


# ------------------------------------------------------------------------------- report and CLI


@needs_both
@pytest.mark.torch
@pytest.mark.tensorflow
def test_report_lists_every_check(ci_run):
    text = (ci_run.run_dir / "parity.md").read_text()
    assert text.startswith("# Backend parity") and ("**PASS**" in text) == ci_run.passed
    for c in ci_run.checks:
        assert c.row() in text
    assert (ci_run.run_dir / "parity.json").exists()
    # ci fits width factors; level 2 draws use each model's own, and the report lists them
    for m in ci_run.backends:
        assert f"Width factors of the {m} model" in text
    assert "every backend trained from the initial weights torch's run started from (`training.initial_weights`)" in text
    assert "Where the posteriors of torch and tensorflow differ, per parameter" in text


@needs_both
@pytest.mark.torch
@pytest.mark.tensorflow
def test_every_backend_trains_from_the_first_ones_initial_weights(ci_run):
    """Level 2 compares the backends' training, not two random initialisations: the second backend's
    run was given the first one's initial.weights.npz (training.initial_weights) and started there."""
    assert ci_run.info["shared_init"] is True
    first, second = (ci_run.models[b].parent for b in BACKENDS)
    start = first / "initial.weights.npz"
    assert parity.load_config(str(first / "config.toml")).training.initial_weights == ""
    assert parity.load_config(str(second / "config.toml")).training.initial_weights == str(start)
    with np.load(start) as a, np.load(second / "initial.weights.npz") as b:
        assert all(np.array_equal(a[k], b[k]) for k in a.files)


def test_cli_exit_code_1_and_numbers_on_failure(tmp_path, monkeypatch, capsys):
    """A parity failure is reported with its numbers and exit code 1, never swallowed."""
    from lif_sbi.config import load_config

    failing = parity.Check(1, "torch → tensorflow", "summary outputs, max rel. diff", 3.2e-3, 1e-5, "≤", False, "8 traces")
    passing = parity.Check(3, "simulator CPU vs CUDA", "skipped: no CUDA device", None, None, "", True)
    run_dir = tmp_path / "parity_ci_x"
    run_dir.mkdir()
    fake = parity.ParityRun(run_dir, load_config("ci"), "smoke", BACKENDS, {}, {}, [failing, passing], {"timings_s": {}})
    monkeypatch.setattr(parity.cli, "run_parity", lambda *a, **k: fake)
    assert parity.main(["--config", "ci", "--results-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL level 1 torch → tensorflow" in out and "0.0032" in out
    text = (run_dir / "parity.md").read_text()
    assert "**FAIL (1 of 2 checks)**" in text and "| **FAIL** |" in text and "| 0.0032 |" in text


def test_cli_backends_picks_a_subset(tmp_path, monkeypatch):
    """--backends passes the chosen installed backends (order kept, repeats dropped) to the run."""
    from lif_sbi.config import load_config

    seen = {}

    def fake_run(*a, **k):
        seen.update(k)
        run_dir = tmp_path / "parity_ci_x"
        run_dir.mkdir(exist_ok=True)
        return parity.ParityRun(run_dir, load_config("ci"), "smoke", k["backends"] or parity.installed_backends(), {}, {}, [], {"timings_s": {}})

    monkeypatch.setattr(parity.cli, "run_parity", fake_run)
    installed = parity.installed_backends()
    if len(installed) < 2:
        pytest.skip("needs two installed backends")
    pick = [installed[1], installed[0], installed[1]]
    assert parity.main(["--config", "ci", "--results-dir", str(tmp_path), "--backends", *pick]) == 0
    assert seen["backends"] == [installed[1], installed[0]] and seen["shared_init"] is True
    assert parity.main(["--config", "ci", "--results-dir", str(tmp_path), "--own-init"]) == 0
    assert seen["shared_init"] is False


@pytest.mark.parametrize("args", [["--config", "no_such_config"], ["--bogus"], ["--set", "training.epochs=0"], ["--set", "nonsense"],
                                  ["--baseline", "theano"], ["--backends", "torch", "theano"], ["--backends", "torch"],
                                  ["--backends", "torch", "torch"], ["--backends", "torch", "tensorflow", "--baseline", "torch"]])
def test_cli_bad_arguments_one_line_exit_2(args, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lif_sbi.parity", *args, "--results-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error:"), proc.stderr
    assert not any(tmp_path.iterdir())


def test_cli_results_dir_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    proc = subprocess.run([sys.executable, "-m", "lif_sbi.parity", "--results-dir", str(f)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.slow  # 120 s: two trainings
@pytest.mark.torch
def test_baseline_compares_two_seeds_under_one_backend(tmp_path):
    """--baseline: two trainings under torch that differ only in training.seed, compared at level 2."""
    run = parity.run_parity("ci", [], tmp_path, say=lambda *a: None, baseline="torch")
    assert run.backends == ["torch", "torch_seed43"] and run.info["baseline"]
    assert set(run.models) == {"torch", "torch_seed43"} and run.models["torch"] != run.models["torch_seed43"]
    configs = [parity.load_config(str(p.parent / "config.toml")).training for p in run.models.values()]
    assert [c.seed for c in configs] == [42, 43] and [c.initial_weights for c in configs] == ["", ""]  # each seed its own start
    assert run.info["shared_init"] is False
    # No cross-backend level 1 (one backend); own-save checks for both models.
    assert {c.comparison for c in run.checks if c.level == 1} == {"torch → torch (own save)", "torch_seed43 → torch (own save)"}
    level2 = [c for c in run.checks if c.level == 2]
    assert any("C2ST" in c.quantity for c in level2) and all(c.comparison == "torch vs torch_seed43" for c in level2)
    # Two different seeds give different posteriors: the draws are not identical.
    a = parity.load_npz(run.evals[("torch", "torch")])["posterior_draws"]
    b = parity.load_npz(run.evals[("torch_seed43", "torch")])["posterior_draws"]
    assert a.shape == b.shape and not np.array_equal(a, b)
    text = parity.write_report(run).read_text()
    assert "**Baseline run**" in text
