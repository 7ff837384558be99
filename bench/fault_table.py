"""Try every fault on a small training run and write the table of what happens: docs/RELIABILITY.md.

    .venv/bin/python bench/fault_table.py            # about 15 minutes on a 2-core CPU

Each fault is injected by tests/faults.py (SIGKILL or SIGINT at a named point; a write that fails
with the errno a full disk, a read-only or immutable folder or a missing permission gives; a bad
Keras backend; bad input) into a fresh ci-sized run under torch (tests/test_faults.py's SMALL).
The table gives, per fault: the exit code, the one line printed, what is left on disk, whether
`--resume` then finishes, and whether the finished run is the uninterrupted one bit for bit
(tests/faults.py's finished_record: losses, weights, optimizer state, width factors, validity
check and every metric, wall times aside).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import faults  # noqa: E402  (tests/faults.py: the fault injector the tests use)
from test_faults import SMALL  # noqa: E402

OUT = ROOT / "docs" / "RELIABILITY.md"

# (what is tried, the fault injected, how the run is started: "new", "resume-truncated", or extra arguments)
SCENARIOS = [
    ("killed (SIGKILL) during the simulation", "kill:simulation", "new"),
    ("killed mid-epoch (epoch 2, batch 2)", "kill:epoch=1,batch=1", "new"),
    ("killed inside a checkpoint write (epoch 2)", "kill:checkpoint=2", "new"),
    ("killed during the width calibration", "kill:calibration", "new"),
    ("killed during the validity fit", "kill:validity", "new"),
    ("killed during the diagnostics (figures written)", "kill:diagnostics", "new"),
    ("killed as the report is written", "kill:report", "new"),
    ("Ctrl-C (SIGINT) mid-epoch", "int:epoch=1,batch=1", "new"),
    ("results folder on a read-only file system", "fail:config.toml:EROFS", "new"),
    ("results folder immutable (chattr +i)", "fail:config.toml:EPERM", "new"),
    ("results folder without write permission", "fail:config.toml:EACCES", "new"),
    ("disk full during a checkpoint", "fail:epoch_*:ENOSPC", "new"),
    ("disk full writing model.keras", "fail:model.keras:ENOSPC", "new"),
    ("disk full writing the figures", "fail:*.png:ENOSPC", "new"),
    ("disk quota exceeded writing metrics.json", "fail:metrics.json:EDQUOT", "new"),
    ("--resume of a run whose optimizer.npz is truncated", "kill:checkpoint=2", "resume-truncated"),
    ("--results-dir is a file", "none", "results-file"),
    ("--set with an unknown key", "none", ["--set", "training.epoch=3"]),
    ("KERAS_BACKEND=foo", "none", {"KERAS_BACKEND": "foo"}),
    ("KERAS_BACKEND=numpy (a Keras backend lif_sbi does not run under)", "none", {"KERAS_BACKEND": "numpy"}),
    ("KERAS_BACKEND=tensorflow, TensorFlow not installed", "uninstalled:tensorflow", {"KERAS_BACKEND": "tensorflow"}),
]


def _runs(results: Path) -> list[Path]:
    return [p for p in results.iterdir() if p.is_dir()] if results.is_dir() else []


def _left(results: Path) -> str:
    """What a start left on disk, in words."""
    runs = _runs(results)
    if not runs:
        return "no run folder"
    run = runs[0]
    latest = run / "checkpoints" / "latest"
    parts = ["report.md (complete)" if (run / "report.md").exists() else "config.toml"]
    parts.append(f"checkpoint of epoch {int(latest.read_text().strip()[6:])}" if latest.exists() else "no checkpoint")
    parts += [name for name in ("model.keras", "calibration.json", "validity.json", "metrics.json") if (run / name).exists()]
    if (run / "plots").is_dir():
        parts.append(f"{len(list((run / 'plots').glob('*.png')))} figures")
    leftovers = [p for p in run.rglob("*") if ".tmp" in p.name]
    parts.append(f"{len(leftovers)} temporary file(s) of the killed write (removed by --resume)" if leftovers else "no partial file")
    return ", ".join(parts)


def _line(proc, tmp: str) -> str:
    if proc.returncode < 0:
        return f"(killed by signal {-proc.returncode}: nothing printed)"
    lines = [line for line in proc.stderr.strip().splitlines() if line]
    text = lines[-1] if lines else "(nothing on stderr)"
    if len(lines) > 1:
        text += f" ({len(lines)} lines)"
    return text.replace(tmp, "…").replace("|", "\\|")


def scenario(what: str, fault: str, how, reference: dict, tmp: Path) -> list[str]:
    """One row: what, exit code, line, left on disk, resume completes, equals the uninterrupted run."""
    results = tmp / "results"
    env = os.environ | {"KERAS_BACKEND": "torch", "LIF_SBI_CACHE": str(tmp / "cache"), "PYTHONHASHSEED": "0"}
    args = [*SMALL, "--results-dir", str(results)]
    if isinstance(how, dict):
        env |= how
    elif isinstance(how, list):
        args += how
    elif how == "results-file":
        results.write_text("a file\n")
    proc = faults.train(fault, args, env)
    if how == "resume-truncated":
        run = _runs(results)[0]
        optimizer = run / "checkpoints" / "epoch_0001" / "optimizer.npz"
        optimizer.write_bytes(optimizer.read_bytes()[:100])
        proc = faults.train("none", ["--resume", str(run)], env)
    row = [what, str(proc.returncode) if proc.returncode >= 0 else f"killed ({-proc.returncode})", _line(proc, str(tmp)), _left(results)]
    runs = _runs(results)
    if not runs or (runs[0] / "report.md").exists():
        return row + ["nothing to resume" if not runs else "finished", "—"]
    resumed = faults.train("none", ["--resume", str(runs[0])], env | {"KERAS_BACKEND": "torch"})
    done = resumed.returncode == 0 and (runs[0] / "report.md").exists()
    if not done:
        return row + [f"no (exit {resumed.returncode}: {_line(resumed, str(tmp))})", "—"]
    try:
        faults.assert_identical(reference, faults.finished_record(runs[0]))
        same = "yes, bit for bit"
    except AssertionError as exc:
        same = f"no: {str(exc).splitlines()[0][:120]}"
    return row + ["yes", same]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as top:
        top = Path(top)
        env = os.environ | {"KERAS_BACKEND": "torch", "LIF_SBI_CACHE": str(top / "cache"), "PYTHONHASHSEED": "0"}
        ref = faults.train("none", [*SMALL, "--results-dir", str(top / "reference")], env)
        if ref.returncode != 0:
            raise SystemExit(f"the uninterrupted run failed:\n{ref.stderr[-3000:]}")
        reference = faults.finished_record(_runs(top / "reference")[0])
        rows = []
        for k, (what, fault, how) in enumerate(SCENARIOS):
            (top / str(k)).mkdir()
            rows.append(scenario(what, fault, how, reference, top / str(k)))
            print(" | ".join(rows[-1]), flush=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}"
    lines = [
        "# What happens on a fault",
        "",
        f"Generated by `.venv/bin/python bench/fault_table.py` on {stamp} ({machine}, torch backend), not typed by hand.",
        "Each fault is injected into a fresh small training run (tests/test_faults.py's `SMALL`) by",
        "tests/faults.py; then `--resume` is run on what is left, and the finished run is compared with the",
        "uninterrupted run of the same seed: losses, weights, optimizer state, width factors, validity",
        "check and every metric (wall times aside). Exit codes: 0 done, 2 bad input, 4 the environment",
        "(a file that cannot be written, a Keras backend that is not installed), 130 interrupted.",
        "",
        "| fault | exit | what is printed (stderr) | left on disk | `--resume` finishes | = uninterrupted run |",
        "|---|---|---|---|---|---|",
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
