"""The house rules a newcomer relies on: short front pages, a results table that matches its records,
modules and functions of a readable size, and no project history in tracked names or text."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = ("lif_sbi", "backends")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
# a numbered work period: the word session(s) followed by a number, or a name ending in _s and a number
WORK_PERIOD = re.compile(r"\bsessions? ?\d+|_s\d+\b", re.IGNORECASE)


def _modules() -> list[Path]:
    return sorted(p for d in PACKAGE_DIRS for p in (ROOT / d).rglob("*.py"))


def _tracked() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [line for line in out.stdout.splitlines() if (ROOT / line).is_file()]


@pytest.mark.parametrize(("path", "limit"), [("README.md", 250), ("bench/RESULTS.md", 600), ("docs/ARCHITECTURE.md", 80)])
def test_front_pages_are_short(path, limit):
    n = len((ROOT / path).read_text(encoding="utf-8").splitlines())
    assert n <= limit, f"{path} has {n} lines; at most {limit}"


def test_readme_results_table_is_what_the_committed_records_give():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "results_table.py"), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_modules_and_functions_are_of_a_readable_size():
    too_long = []
    for path in _modules():
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(ROOT)
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{rel}: {len(text.splitlines())} lines")
        tree = ast.parse(text)
        if ast.get_docstring(tree) is None:
            too_long.append(f"{rel}: no module docstring")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    too_long.append(f"{rel}:{node.lineno} {node.name}: {n} lines")
    assert not too_long, "\n".join(too_long)


def test_no_tracked_path_or_text_names_a_numbered_work_period():
    found = []
    for rel in _tracked():
        if WORK_PERIOD.search(rel):
            found.append(f"path {rel}")
            continue
        try:
            text = (ROOT / rel).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # a binary file (a PNG figure)
        for k, line in enumerate(text.splitlines(), 1):
            if WORK_PERIOD.search(line):
                found.append(f"{rel}:{k}: {line.strip()[:120]}")
    assert not found, "\n".join(found[:40])


def test_every_committed_results_folder_is_indexed():
    index = (ROOT / "results" / "README.md").read_text(encoding="utf-8")
    missing = [f"{kind}/{d.name}" for kind in ("showcase", "parity", "bench", "reference-posteriors")
               for d in sorted((ROOT / "results" / kind).iterdir()) if d.is_dir() and f"{kind}/{d.name}" not in index]
    assert not missing, f"results/README.md does not index {missing}"
