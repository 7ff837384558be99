"""One line for every fault (lif_sbi/errors.py): OSErrors naming path and cause, and a Keras backend that lif_sbi does not run under or that is not installed."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from lif_sbi import errors, files, train


def test_an_os_error_is_one_line_naming_the_path_and_the_cause(tmp_path):
    line = errors.os_error_line(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "results/x/metrics.json"))
    assert line == "cannot write or read results/x/metrics.json: No space left on device (ENOSPC)"
    # from files.atomic_write, which every file of a run goes through: it was a write, of that file
    def full(tmp):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a full disk reports it to write(): no file named
    with pytest.raises(OSError) as caught:
        files.atomic_write(tmp_path / "metrics.json", full)
    assert errors.os_error_line(caught.value) == f"cannot write {tmp_path / 'metrics.json'}: No space left on device (ENOSPC)"
    assert list(tmp_path.iterdir()) == []  # its temporary file is gone
    assert "EROFS" in errors.os_error_line(OSError(errno.EROFS, os.strerror(errno.EROFS), "r/a"))


@pytest.mark.parametrize("name, match", [("foo", "runs under the Keras backends torch, tensorflow, jax"),
                                         ("numpy", "runs under the Keras backends")])
def test_a_backend_lif_sbi_does_not_run_under_is_one_line_exit_4(name, match, tmp_path):
    env = os.environ | {"KERAS_BACKEND": name}
    proc = subprocess.run([sys.executable, "-m", "lif_sbi.train", "--config", "ci", "--results-dir", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == errors.EXIT_ENVIRONMENT, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0] and f"KERAS_BACKEND = '{name}'" in lines[0], proc.stderr
    assert "installed here: torch" in lines[0] and list(tmp_path.iterdir()) == []


def test_a_backend_that_is_not_installed_says_how_to_install_it(monkeypatch, capsys, tmp_path):
    """As with TensorFlow missing from a torch-only set-up: the installed ones and the install command."""
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    monkeypatch.setattr(errors, "installed_backends", lambda: ["torch"])
    assert train.main(["--config", "ci", "--results-dir", str(tmp_path)]) == errors.EXIT_ENVIRONMENT
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "tensorflow is not installed (installed here: torch)" in line, line
    assert errors.INSTALL["tensorflow"] in line and "KERAS_BACKEND=torch" in line and list(tmp_path.iterdir()) == []


def test_without_keras_backend_the_keras_json_or_keras_default_is_checked(monkeypatch, tmp_path):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(errors, "installed_backends", lambda: ["torch"])
    with pytest.raises(errors.EnvironmentFault, match="Keras' default .KERAS_BACKEND is not set. = 'tensorflow'"):
        errors.keras_backend()
    (tmp_path / "keras.json").write_text('{"backend": "torch"}')
    assert errors.keras_backend() == "torch"


def test_a_results_folder_that_is_a_file_is_one_line_exit_2(tmp_path):
    target = tmp_path / "results"
    target.write_text("a file\n")
    proc = subprocess.run([sys.executable, "-m", "lif_sbi.train", "--config", "ci", "--results-dir", str(target)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == errors.EXIT_INPUT and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "is a file: expected a folder" in proc.stderr and target.read_text() == "a file\n"
