"""Backend parity (lif_sbi.parity): same weights → same numbers; independent training → equivalent posteriors.

The module fixture runs the whole ci-sized parity check once (trains `ci` twice under torch and
twice under tensorflow, evaluates the first save of each under every backend, runs the
equivalence test on all four posteriors); the tests read its checks. Every backend runs in its own subprocess (Keras reads KERAS_BACKEND once per process).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from lif_sbi import parity

BACKENDS = ["torch", "tensorflow"]
# each training's own diagnostics cut down (parity draws its own 40 test traces x 100 draws)
SMALL_DIAGNOSTICS = ["diagnostics.n_test=20", "diagnostics.validity_traces=50", "diagnostics.n_ppc=1"]
HAVE_BOTH = set(BACKENDS) <= set(parity.installed_backends())
needs_both = pytest.mark.skipif(not HAVE_BOTH, reason="needs both the torch and the tensorflow Keras backends")


def _rows(checks) -> str:
    return "\n".join(c.row() for c in checks)


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory):
    if not HAVE_BOTH:
        pytest.skip("needs both the torch and the tensorflow Keras backends")
    run = parity.run_parity("ci", SMALL_DIAGNOSTICS, tmp_path_factory.mktemp("parity"), backends=BACKENDS, say=lambda *a: None)
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
    """The equivalence test end to end at ci size (two models per backend): one check per
    discrepancy, each with its bound, margin and verdict, finite figures, and the power check,
    which must not find a 0.25-sd shift equivalent (at this size almost nothing is decided: the
    honest verdict is "inconclusive")."""
    assert ci_run.size == "smoke" and ci_run.info["seeds"] == 2
    checks = [c for c in ci_run.checks if c.level == 2]
    tested = [c for c in checks if "cross − within" in c.quantity]
    assert [c.quantity.split(":")[0] if c.quantity.startswith("c2st") else c.quantity.split(": cross")[0] for c in tested] == \
        list(parity.equivalence.DISCREPANCIES)
    for c in tested:
        assert c.figure is not None and math.isfinite(c.figure) and c.op == "<", c.row()
        assert any(v in c.note for v in ("equivalent", "different", "inconclusive")) and "permutation p" in c.note, c.row()
        assert c.passed == c.note.split(": ", 1)[1].startswith("equivalent"), c.row()
    power = [c for c in checks if c.quantity.startswith("power:")]
    assert len(power) == 1 and power[0].passed and "smallest shift reported different" in power[0].note, _rows(power)
    groups = ci_run.info["level2"]["models"]
    assert sorted(groups.values()) == ["tensorflow", "tensorflow", "torch", "torch"], groups


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


def test_report_cells_escape_bars():
    row = parity.Check(2, "torch vs tensorflow", "C_m: |Δ Pearson r|", 0.01, 0.02, "≤", True, "r = |x|").row()
    assert row.count("|") - row.count("\\|") == 8  # 7 cells
    assert "\\|Δ Pearson r\\|" in row


def test_thresholds_are_the_promised_ones():
    full = parity.THRESHOLDS["full"]
    assert (full.summary_rel, full.log_prob_rel, full.draws_rel) == (1e-5, 1e-4, 1e-3)
    smoke = parity.THRESHOLDS["smoke"]
    assert (smoke.summary_rel, smoke.log_prob_rel, smoke.draws_rel) == (full.summary_rel, full.log_prob_rel, full.draws_rel)
    # level 2: margins on (cross − within), the same at every size; K = 5 at full size
    lv = parity.LEVEL2["full"]
    assert lv.margins() == {"c2st": 0.03, "mean_shift": 0.1, "ks": 0.04, "r": 0.02, "sd_ratio": 0.1, "sbc": 0.05}
    assert lv.seeds == 5 and lv.alpha == 0.05 and 0.25 in lv.power_shifts
    assert parity.LEVEL2["smoke"].margins() == lv.margins() and parity.LEVEL2["smoke"].seeds == 2
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
    assert "Level 2 tests whether changing the backend changes the posterior more than retraining does" in text
    assert "Power: the second backend's draws of one parameter moved by s pooled posterior sds" in text


@needs_both
@pytest.mark.torch
@pytest.mark.tensorflow
def test_level2_models_differ_only_in_their_training_seed(ci_run):
    """Each backend's models: the same configuration but training.seed, each from its own initial
    weights (no training.initial_weights), and their posteriors differ."""
    configs = {m: parity.load_config(str(p.parent / "config.toml")) for m, p in ci_run.models.items()}
    assert set(configs) == {"torch", "torch_seed43", "tensorflow", "tensorflow_seed43"}
    assert {m: c.training.seed for m, c in configs.items()} == {"torch": 42, "torch_seed43": 43, "tensorflow": 42, "tensorflow_seed43": 43}
    assert all(c.training.initial_weights == "" for c in configs.values())
    base = configs["torch"]
    for c in configs.values():
        assert dataclasses.replace(c, training=dataclasses.replace(c.training, seed=42)) == base
    a, b = (np.load(ci_run.run_dir / f"draws_{m}.npz")["posterior_draws"] for m in ("torch", "torch_seed43"))
    assert a.shape == b.shape and not np.array_equal(a, b)


@needs_both
def test_reuse_takes_a_model_only_for_its_own_backend_and_configuration(ci_run):
    """`reusable` finds each of the fixture's models for the backend and overrides it was trained
    with, and none for another backend, another seed or another configuration value."""
    from lif_sbi.parity.run import _variants, reusable

    variants = _variants(ci_run.config, SMALL_DIAGNOSTICS, BACKENDS, parity.LEVEL2["smoke"], False)
    assert set(variants) == set(ci_run.models)
    for label, (backend, overrides) in variants.items():
        assert reusable(ci_run.run_dir, label, backend, "ci", overrides) == ci_run.models[label].parent
        other = next(b for b in BACKENDS if b != backend)
        assert reusable(ci_run.run_dir, label, other, "ci", overrides) is None
        assert reusable(ci_run.run_dir, label, backend, "ci", overrides + ["training.seed=7"]) is None
        assert reusable(ci_run.run_dir, label, backend, "ci", overrides[1:]) is None  # diagnostics.n_test differs


@needs_both
@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.tensorflow
def test_a_run_reusing_every_model_trains_nothing_and_gives_the_same_checks(ci_run, tmp_path):
    """--reuse with the fixture's folder: every model copied (no training), the same checks."""
    run = parity.run_parity("ci", SMALL_DIAGNOSTICS, tmp_path, backends=BACKENDS, say=lambda *a: None, reuse=ci_run.run_dir)
    assert set(run.info["reused"]) == set(ci_run.models)
    assert not any(k.startswith("train ") for k in run.info["timings_s"])
    assert [(c.comparison, c.quantity, c.figure) for c in run.checks if c.level == 2] == \
        [(c.comparison, c.quantity, c.figure) for c in ci_run.checks if c.level == 2]
    assert "Reused, not trained here" in parity.write_report(run).read_text()


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
    assert seen["backends"] == [installed[1], installed[0]] and seen["seeds"] is None and seen["negative_control"] is False
    assert parity.main(["--config", "ci", "--results-dir", str(tmp_path), "--seeds", "3", "--negative-control"]) == 0
    assert seen["seeds"] == 3 and seen["negative_control"] is True and seen["reuse"] is None
    (tmp_path / "earlier" / "models").mkdir(parents=True)
    assert parity.main(["--config", "ci", "--results-dir", str(tmp_path), "--reuse", str(tmp_path / "earlier")]) == 0
    assert seen["reuse"] == tmp_path / "earlier"


@pytest.mark.parametrize("args", [["--config", "no_such_config"], ["--bogus"], ["--set", "training.epochs=0"], ["--set", "nonsense"],
                                  ["--seeds", "1"], ["--backends", "torch", "theano"], ["--backends", "torch"],
                                  ["--backends", "torch", "torch"], ["--reuse", "no_such_parity_run"]])
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


def test_cli_a_results_dir_that_cannot_be_made_is_one_line_exit_4(tmp_path):
    """The run folder cannot be created (a file stands where a folder would): exit 4, one line naming it."""
    (tmp_path / "file").write_text("x")
    target = tmp_path / "file" / "results"
    proc = subprocess.run([sys.executable, "-m", "lif_sbi.parity", "--results-dir", str(target)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 4, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: cannot") and str(tmp_path / "file") in line and "ENOTDIR" in line, line


def test_a_worker_that_cannot_write_is_one_line_exit_4(ci_run, tmp_path):
    """A worker whose output cannot be written stops with one line and exit 4, which the parent
    passes on as one line naming the task and backend."""
    (tmp_path / "file").write_text("x")
    args = {"model": str(ci_run.models["torch"]), "batch": str(ci_run.run_dir / "level1_batch.npz"), "out": str(tmp_path / "file" / "out.npz")}
    proc = subprocess.run([sys.executable, "-m", "lif_sbi.parity", "_worker", "evaluate", json.dumps(args)], capture_output=True, text=True,
                          env=parity.worker_env("torch"), timeout=300)
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: cannot write or read {tmp_path / 'file'}"), proc.stderr[-2000:]
    fake = subprocess.CompletedProcess([], 4, "", "some library noise\nerror: cannot write /x/draws.npz: No space left on device (ENOSPC)\n")
    exc = parity.workers._failed("draws", "torch", fake)
    assert isinstance(exc, parity.workers.EnvironmentFault)
    assert str(exc) == "draws under torch: cannot write /x/draws.npz: No space left on device (ENOSPC)"
    assert isinstance(parity.workers._failed("draws", "torch", subprocess.CompletedProcess([], 1, "", "Traceback ...")), parity.ParityError)


@pytest.mark.slow  # 6 trainings at ci size
@pytest.mark.torch
@pytest.mark.tensorflow
@needs_both
def test_the_negative_control_is_not_reported_equivalent_at_ci_size(tmp_path):
    """--negative-control: torch's models against models trained with C_m's prior moved up by
    10 pF; level 2 must not report them equivalent."""
    run = parity.run_parity("ci", [], tmp_path, backends=BACKENDS, say=lambda *a: None, negative_control=True)
    (check,) = [c for c in run.checks if c.quantity.startswith("negative control (a)")]
    assert check.passed and check.figure > 0, check.row()
    ctrl = run.info["level2"]["negative_control"]
    assert set(ctrl["posterior_moved_sd"]) == {"C_m", "g_L", "E_L", "V_th", "V_res", "t_ref"}
    shifted = parity.load_config(str(run.models["torch_shifted_seed42"].parent / "config.toml")).prior
    assert shifted.C_m == pytest.approx((110.0, 210.0)) and ctrl["prior_moved"] == {"C_m": 10.0}
    assert "Negative control (a)" in parity.write_report(run).read_text()
