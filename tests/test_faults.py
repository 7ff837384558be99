"""Faults during training (tests/faults.py injects them): a run killed anywhere and resumed is the
uninterrupted run bit for bit; a file that cannot be written is one line and exit 4, leaves no
partial file, and --resume finishes once the fault is gone."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import faults
from faults import assert_identical, finished_record

pytestmark = pytest.mark.torch

# A ci-sized run cut down further (4 epochs of 5 batches, the last one partial): ~20 s a start.
SMALL = ["--config", "ci", "--set", "data.n_traces=384", "--set", "training.epochs=4", "--set", "diagnostics.n_test=20",
         "--set", "diagnostics.n_draws=50", "--set", "diagnostics.n_ppc=1", "--set", "diagnostics.validity_traces=50",
         "--set", "data.cache=false"]


def _env(tmp_path: Path) -> dict:
    return os.environ | {"KERAS_BACKEND": "torch", "LIF_SBI_CACHE": str(tmp_path / "cache"), "PYTHONHASHSEED": "0"}


def _one_run(results: Path) -> Path:
    runs = [p for p in results.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def _error_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0]


def test_a_run_killed_and_failing_anywhere_resumes_into_the_uninterrupted_run(tmp_path):
    """One run folder through six faults in a row, each start killed (SIGKILL, by its own pid) or
    stopped by a failing write at another point: during simulation, as the first checkpoint is
    written (no space), mid-epoch, inside a checkpoint write, during the diagnostics, and as a
    figure is written (read-only). The seventh start finishes, and its record equals the
    uninterrupted run's bit for bit. (bench/fault_table.py tries each fault, and more, on a fresh run.)"""
    env = _env(tmp_path)
    reference = faults.train("none", [*SMALL, "--results-dir", str(tmp_path / "reference")], env)
    assert reference.returncode == 0, reference.stderr[-3000:]
    results = tmp_path / "faulty"
    first = faults.train("kill:simulation", [*SMALL, "--results-dir", str(results)], env)
    assert first.returncode == -9, first.stderr[-3000:]
    run_dir = _one_run(results)
    assert not (run_dir / "checkpoints").exists()
    chain = [("fail:epoch_*:ENOSPC", 4), ("kill:epoch=1,batch=1", -9), ("kill:checkpoint=2", -9),
             ("kill:diagnostics", -9), ("fail:*.png:EROFS", 4), ("none", 0)]
    for fault, code in chain:
        proc = faults.train(fault, ["--resume", str(run_dir)], env)
        assert proc.returncode == code, f"{fault}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        if code == 4:  # one line naming the file and the cause, and how to go on
            line = _error_line(proc)
            name, cause = fault.split(":")[1], fault.split(":")[2]
            assert f"({cause})" in line and f"--resume {run_dir}" in line, line
            assert name.strip("*").strip("_") in line, line
        if code != -9:  # never a partial file: no temporary file or half-made checkpoint is left behind
            assert not [p for p in run_dir.rglob("*") if p.name.startswith(".") or ".tmp" in p.name]
        assert "Skipping variable loading" not in proc.stderr
    assert_identical(finished_record(_one_run(tmp_path / "reference")), finished_record(run_dir))
    timings = json.loads((run_dir / "timings.json").read_text())
    assert [s["kind"] for s in timings["starts"]] == ["new"] + ["resume"] * len(chain)
    assert f"{len(chain) + 1}: new at" in (run_dir / "report.md").read_text()


def test_an_online_run_killed_mid_epoch_resumes_into_the_uninterrupted_run(tmp_path):
    """data.mode = "online": batch b of epoch e is simulated from (data.seed, e, b), so a run killed
    in its second epoch and resumed trains on the batches the uninterrupted run trained on."""
    env, online = _env(tmp_path), [*SMALL, "--set", "data.mode=online"]
    reference = faults.train("none", [*online, "--results-dir", str(tmp_path / "reference")], env)
    assert reference.returncode == 0, reference.stderr[-3000:]
    killed = faults.train("kill:epoch=1,batch=2", [*online, "--results-dir", str(tmp_path / "killed")], env)
    assert killed.returncode == -9, killed.stderr[-3000:]
    run_dir = _one_run(tmp_path / "killed")
    resumed = faults.train("none", ["--resume", str(run_dir)], env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_identical(finished_record(_one_run(tmp_path / "reference")), finished_record(run_dir))


def test_no_space_for_the_first_files_leaves_no_run_folder(tmp_path):
    """A new run whose config.toml cannot be written: one line naming it, exit 4, no folder left."""
    proc = faults.train("fail:config.toml:ENOSPC", [*SMALL, "--results-dir", str(tmp_path / "results")], _env(tmp_path))
    assert proc.returncode == 4, proc.stderr[-3000:]
    line = _error_line(proc)
    assert "config.toml" in line and "No space left on device (ENOSPC)" in line, line
    assert list((tmp_path / "results").iterdir()) == []


def test_a_damaged_checkpoint_on_resume_is_one_line_exit_2(tmp_path):
    """--resume of a run whose latest checkpoint's weights archive was cut short: one line naming
    the file, exit 2, the folder untouched. (bench/fault_table.py does the same to a real
    checkpoint's optimizer.npz.)"""
    from lif_sbi.config import load_config

    run_dir = tmp_path / "results" / "ci_torch_x"
    ckpt = run_dir / "checkpoints" / "epoch_0001"
    ckpt.mkdir(parents=True)
    (run_dir / "config.toml").write_text(load_config("ci", [s for s in SMALL[2:] if s != "--set"]).to_toml())
    (run_dir / "checkpoints" / "latest").write_text("epoch_0001\n")
    (ckpt / "state.json").write_text(json.dumps({"epoch": 1, "history": [], "best_val_loss": "inf", "callbacks": {}}))
    (ckpt / "model.weights.npz").write_bytes(b"PK\x03\x04" + bytes(96))  # the first 100 bytes of a zip
    proc = faults.train("none", ["--resume", str(run_dir)], _env(tmp_path))
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = _error_line(proc)
    assert f"{ckpt / 'model.weights.npz'} cannot be read" in line and "damaged or foreign file" in line, line
    assert (ckpt / "model.weights.npz").read_bytes() == b"PK\x03\x04" + bytes(96)


@pytest.mark.slow  # 100 s: two runs and a resume
@pytest.mark.parametrize("backend", [pytest.param("tensorflow", marks=pytest.mark.tensorflow),
                                     pytest.param("jax", marks=pytest.mark.jax)])
def test_a_run_killed_mid_epoch_resumes_bit_for_bit_under_the_other_backends(backend, tmp_path):
    """TensorFlow's and JAX's dropout draw from the model's Keras seed generators, which
    `batches.reseed` sets from (seed, epoch) as it does PyTorch's global generator."""
    pytest.importorskip(backend)
    env = _env(tmp_path) | {"KERAS_BACKEND": backend}
    reference = faults.train("none", [*SMALL, "--results-dir", str(tmp_path / "reference")], env)
    assert reference.returncode == 0, reference.stderr[-3000:]
    assert faults.train("kill:epoch=2,batch=1", [*SMALL, "--results-dir", str(tmp_path / "faulty")], env).returncode == -9
    run_dir = _one_run(tmp_path / "faulty")
    resumed = faults.train("none", ["--resume", str(run_dir)], env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_identical(finished_record(_one_run(tmp_path / "reference")), finished_record(run_dir))


@pytest.mark.slow  # about 6 minutes on a 2-core CPU: the default run twice, and a resume
def test_the_default_run_killed_after_its_step_is_compiled_resumes_bit_for_bit(tmp_path):
    """The default run's training shape is compiled by inductor after 200 replays, in its first
    epoch; killed in its third epoch and resumed, the new process compiles that shape at its
    first step (the recorder's counters come from the checkpoint) and the run finishes as the
    uninterrupted one did, bit for bit."""
    env = _env(tmp_path)
    quick = ["--config", "default", "--set", "training.epochs=3", "--set", "data.cache=false", "--set", "diagnostics.n_test=50",
             "--set", "diagnostics.validity_traces=100"]
    reference = faults.train("none", [*quick, "--results-dir", str(tmp_path / "reference")], env, timeout=1200)
    assert reference.returncode == 0, reference.stderr[-3000:]
    killed = faults.train("kill:epoch=2,batch=100", [*quick, "--results-dir", str(tmp_path / "faulty")], env, timeout=1200)
    assert killed.returncode == -9, killed.stderr[-3000:]
    run_dir = _one_run(tmp_path / "faulty")
    resumed = faults.train("none", ["--resume", str(run_dir)], env, timeout=1200)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "compiled by inductor" in json.loads((run_dir / "metrics.json").read_text())["training_step"]
    assert_identical(finished_record(_one_run(tmp_path / "reference")), finished_record(run_dir))
