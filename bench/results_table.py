"""The README's results table, made from the committed showcase runs' records (results/showcase/*).

    .venv/bin/python bench/results_table.py            # rewrite README.md between its markers
    .venv/bin/python bench/results_table.py --check    # exit 1 if README.md's table is not what the records give

The first row is the reference study's reported figures (results/reference-study.json, from
DESIGN.md §2). Then one row per folder of results/showcase/ (sorted by name): the set-up (stimulus
protocols, whether the estimator sees the current, recording noise, prior kind; config.toml),
recovery r per parameter and the range of 90 % interval coverage over the six parameters
(metrics.json), SBC passes, the C2ST accuracy against exact MCMC reference posteriors where
results/reference-posteriors/*/summary.json holds one for that run id (and the refined
posteriors' where refined.json does: bench/refined_posteriors.py), training time
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
import tomllib
from pathlib import Path

from lif_sbi.priors import PARAM_NAMES as PARAMETERS

ROOT = Path(__file__).resolve().parent.parent
SHOWCASE = ROOT / "results" / "showcase"
STUDY = ROOT / "results" / "reference-study.json"
REFERENCES = ROOT / "results" / "reference-posteriors"
README = ROOT / "README.md"
BEGIN = "<!-- results table: begin (written by bench/results_table.py from results/showcase/*; do not edit by hand) -->"
END = "<!-- results table: end -->"


def setup(config: dict) -> str:
    """The data a run trained on, in a few words: protocols, current seen or not, noise, prior, and
    "online" where every step drew new traces."""
    st, model = config.get("stimulus", {}), config.get("model", {})
    noise = config.get("noise", {}).get("sd_v", 0.0)
    return (f"{'+'.join(st.get('protocols', ['coloured']))}, I {'seen' if model.get('observe_current') else 'unseen'}, "
            f"{'no noise' if not noise else f'{noise * 1e3:g} mV noise'}, {config.get('prior', {}).get('kind', 'reference')} prior"
            + (" (widened)" if any(v for k, v in config.get("prior", {}).items() if k != "kind") else "")
            + (", online" if config.get("data", {}).get("mode") == "online" else ""))


def c2st_by_run() -> dict:
    """Estimator-vs-MCMC C2ST accuracy (mean over accepted references) by training run id, and the
    refined posteriors' (bench/refined_posteriors.py's refined.json) where measured."""
    out = {}
    for path in sorted(REFERENCES.glob("*/summary.json")):
        s = json.loads(path.read_text())
        if s.get("c2st_estimator_mean") is not None:
            out[s["run_id"]] = f"{s['c2st_estimator_mean']:.2f} ({s['accepted']} obs.)"
    for path in sorted(REFERENCES.glob("*/refined.json")):
        s = json.loads(path.read_text())
        out[s["run_id"]] = f"{s['c2st_estimator_mean']:.2f}; refined {s['c2st_refined_mean']:.2f} ({len(s['observations'])} obs.)"
    return out


def run_id_of(folder: Path) -> str:
    """A run folder's run id, read from its report.md (a committed copy's folder is renamed)."""
    return re.search(r"^\| run id \| (\S+) \|", (folder / "report.md").read_text(), re.M).group(1)


def row(folder: Path, c2st: dict) -> str:
    """One table row for a showcase run folder."""
    metrics = json.loads((folder / "metrics.json").read_text())
    env = json.loads((folder / "environment.json").read_text())
    config = tomllib.loads((folder / "config.toml").read_text())
    run_id = run_id_of(folder)
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
        f"[{folder.name}](results/showcase/{folder.name}/report.md)", config["name"], setup(config), env["keras_backend"], device,
        f"{stamp.group(1)}-{stamp.group(2)}-{stamp.group(3)}",
        *[f"{per[p]['r']:.3f}" for p in PARAMETERS],
        f"{min(cov):.2f}–{max(cov):.2f}", f"{metrics['aggregate']['sbc_n_pass']}/6", c2st.get(run_id, "—"),
        f"{len(epochs)}", _seconds(training_s), "—" if resumed else _seconds(timings["total_s"]),
    ]
    return "| " + " | ".join(cells) + " |"


def study_row() -> str:
    """The reference study's reported figures (results/reference-study.json)."""
    s = json.loads(STUDY.read_text())
    cells = ["reference study (reported)", "reference", s["setup"], s["backend"], s["device"], s["reported"],
             *[s["r"][p] for p in PARAMETERS], s["coverage_90"], s["sbc_pass"], "—", str(s["epochs"]), s["training"], "—"]
    return "| " + " | ".join(cells) + " |"


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 600 else f"{s / 60:.0f} min"


def table() -> str:
    """The whole table, between its markers."""
    head = ("| run | config | set-up | backend | device | measured | " + " | ".join(f"r {p}" for p in PARAMETERS)
            + " | 90 % coverage | SBC pass | C2ST vs MCMC | epochs | training | whole run |")
    rule = "|" + "---|" * 6 + "---:|" * 12 + "---:|"
    c2st = c2st_by_run()
    rows = [study_row()] + [row(d, c2st) for d in sorted(SHOWCASE.iterdir()) if (d / "metrics.json").is_file()]
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
