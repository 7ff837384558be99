"""The README's results table, made from the committed showcase runs' records (results/showcase/*).

    .venv/bin/python bench/results_table.py            # rewrite README.md between its markers
    .venv/bin/python bench/results_table.py --check    # exit 1 if README.md's table is not what the records give

One row per folder of results/showcase/ (sorted by name): recovery r per parameter and the range
of 90 % interval coverage over the six parameters (metrics.json), SBC passes, training time
(the epochs' wall seconds in history.csv, which count every session of a resumed run), the whole
command's wall time (timings.json; none for a resumed run), the device
and backend (environment.json) and the date measured (the run id in report.md). Nothing here is
typed by hand, so the table cannot drift from the records; tests/test_house.py runs --check.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path

from lif_sbi.priors import PARAM_NAMES as PARAMETERS

ROOT = Path(__file__).resolve().parent.parent
SHOWCASE = ROOT / "results" / "showcase"
README = ROOT / "README.md"
BEGIN = "<!-- results table: begin (written by bench/results_table.py from results/showcase/*; do not edit by hand) -->"
END = "<!-- results table: end -->"


def row(folder: Path) -> str:
    """One table row for a showcase run folder."""
    metrics = json.loads((folder / "metrics.json").read_text())
    env = json.loads((folder / "environment.json").read_text())
    config = re.search(r'^name = "([^"]+)"', (folder / "config.toml").read_text(), re.M).group(1)
    run_id = re.search(r"^\| run id \| (\S+) \|", (folder / "report.md").read_text(), re.M).group(1)
    stamp = re.search(r"_(\d{4})(\d\d)(\d\d)T\d{6}Z", run_id)
    with open(folder / "history.csv", newline="") as f:
        epochs = list(csv.DictReader(f))
    training_s = sum(float(e["wall_s"]) for e in epochs)
    timings = metrics["timings"]
    # a run resumed after an interruption has no single wall time for the whole command
    resumed = "sessions" in timings or training_s > 1.05 * timings["training_s"]
    per = metrics["parameters"]
    cov = [per[p]["coverage_90"] for p in PARAMETERS]
    device = env["device"] if env["device"] != "CPU" else f"{env['cpu_count']}-core CPU"
    cells = [
        f"[{folder.name}](results/showcase/{folder.name}/report.md)", config, env["keras_backend"], device,
        f"{stamp.group(1)}-{stamp.group(2)}-{stamp.group(3)}",
        *[f"{per[p]['r']:.3f}" for p in PARAMETERS],
        f"{min(cov):.2f}–{max(cov):.2f}", f"{metrics['aggregate']['sbc_n_pass']}/6",
        f"{len(epochs)}", _seconds(training_s), "—" if resumed else _seconds(timings["total_s"]),
    ]
    return "| " + " | ".join(cells) + " |"


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 600 else f"{s / 60:.0f} min"


def table() -> str:
    """The whole table, between its markers."""
    head = ("| run | config | backend | device | measured | " + " | ".join(f"r {p}" for p in PARAMETERS)
            + " | 90 % coverage | SBC pass | epochs | training | whole run |")
    rule = "|" + "---|" * 5 + "---:|" * 11 + "---:|"
    rows = [row(d) for d in sorted(SHOWCASE.iterdir()) if (d / "metrics.json").is_file()]
    return "\n".join([BEGIN, head, rule, *rows, END])


def updated(text: str) -> str:
    """README text with the table between the markers replaced."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{README}: the results-table markers are missing")
    return text[:start] + table() + text[end + len(END):]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="do not write; exit 1 if README.md's table differs from the records")
    args = p.parse_args(argv)
    text = README.read_text(encoding="utf-8")
    new = updated(text)
    if args.check:
        if new != text:
            print("README.md's results table differs from results/showcase/*: run bench/results_table.py", file=sys.stderr)
            return 1
        return 0
    if new != text:
        README.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
