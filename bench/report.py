"""Turn pytest-benchmark JSON files into markdown tables.

    .venv/bin/python bench/report.py results/bench_simulator.json [more.json ...] [-o table.md]

For simulator benchmarks (extra_info has `n`, `impl`): one table per file of traces per second
(N / median time and N / best time) and the ratio to the `reference` implementation measured
in the same file. Other benchmarks (e.g. bench_training.py) get a plain table of times with
their extra_info. Each table is preceded by the machine and versions the JSON records.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

IMPL_ORDER = ["reference", "naive_eager", "eager", "compiled", "numba_alloc", "numba", "floor_copy", "floor_write", "stimulus", "stimulus_one_block",
              "cuda", "cuda_compiled", "cuda_triton", "cuda_floor_copy", "cuda_floor_write", "cuda_stimulus"]
IMPL_LABEL = {
    "reference": "reference NumPy loop (float64)",
    "naive_eager": "naive eager torch loop, (N, 501) layout",
    "eager": "`simulate`, eager (time-major, fused)",
    "compiled": "`simulate`, torch.compile",
    "numba": "`simulate`, Numba per-trace kernel (default on the CPU), into a reused `out`",
    "numba_alloc": "`simulate`, Numba per-trace kernel, allocating the output each call",
    "cuda": "`simulate` on CUDA, eager",
    "cuda_compiled": "`simulate` on CUDA, torch.compile",
    "cuda_triton": "`simulate` on CUDA, fused Triton kernel (default on CUDA)",
    "floor_copy": "memory floor: copy an (N, 501) float32 array (read + write)",
    "floor_write": "memory floor: fill an (N, 501) float32 array (write only)",
    "cuda_floor_copy": "memory floor on CUDA: copy (read + write)",
    "cuda_floor_write": "memory floor on CUDA: fill (write only)",
    "stimulus": "drawing the coloured stimuli (`sample_current`, float64 FFT, float32 out), in row blocks",
    "stimulus_one_block": "the same in one block of all rows",
    "cuda_stimulus": "drawing the coloured stimuli on CUDA",
}


def fmt_rate(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e4:
        return f"{x / 1e3:.0f} k"
    if x >= 1e3:
        return f"{x / 1e3:.1f} k"
    return f"{x:.0f}"


def fmt_time(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.0f} µs"


def machine_line(doc: dict) -> str:
    m = doc.get("machine_info", {})
    cpu = m.get("cpu", {})
    brand = cpu.get("brand_raw") or m.get("processor") or "unknown CPU"
    cores = cpu.get("count")
    parts = [f"{brand}" + (f", {cores} logical cores" if cores else ""), f"{m.get('system', '')} {m.get('release', '')}".strip()]
    parts.append(f"Python {m.get('python_version', '?')}")
    extra = next((b.get("extra_info", {}) for b in doc.get("benchmarks", []) if b.get("extra_info")), {})
    if extra.get("torch"):
        parts.append(f"torch {extra['torch']}" + (f" ({extra['threads']} threads)" if extra.get("threads") else ""))
    gpus = sorted({b["extra_info"]["gpu"] for b in doc.get("benchmarks", []) if b.get("extra_info", {}).get("gpu")})
    parts.append("GPU: " + ", ".join(gpus) if gpus else "no GPU measured")
    commit = doc.get("commit_info", {})
    if commit.get("id"):
        parts.append(f"commit {commit['id'][:10]}" + (" (dirty)" if commit.get("dirty") else ""))
    return f"Machine: {'; '.join(p for p in parts if p)}. Run {doc.get('datetime', '?')}."


def simulator_table(doc: dict) -> str | None:
    rows = [b for b in doc.get("benchmarks", []) if "n" in b.get("extra_info", {}) and "impl" in b.get("extra_info", {})]
    if not rows:
        return None
    ref = next((b for b in rows if b["extra_info"]["impl"] == "reference"), None)
    ref_rate = ref["extra_info"]["n"] / ref["stats"]["median"] if ref else None
    order = {k: i for i, k in enumerate(IMPL_ORDER)}
    rows.sort(key=lambda b: (order.get(b["extra_info"]["impl"], 99), b["extra_info"]["n"]))
    # the copy floor of the same N on the same device, measured in the same run
    floors = {(b["extra_info"].get("device"), b["extra_info"]["n"]): b["stats"]["median"]
              for b in rows if b["extra_info"]["impl"] in ("floor_copy", "cuda_floor_copy")}
    lines = [
        "| implementation | device | dtype | N | median time | traces/s (median) | traces/s (best) | × reference | × copy floor's time | rounds |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for b in rows:
        e, s = b["extra_info"], b["stats"]
        rate, best = e["n"] / s["median"], e["n"] / s["min"]
        ratio = f"{rate / ref_rate:,.0f}×" if ref_rate and e["impl"] != "reference" else ("1×" if ref_rate else "–")
        if ref_rate and e["impl"] != "reference" and rate / ref_rate < 10:
            ratio = f"{rate / ref_rate:.1f}×"
        floor = floors.get((e.get("device"), e["n"]))
        to_floor = f"{s['median'] / floor:.2f}" if floor else "–"
        lines.append(
            f"| {IMPL_LABEL.get(e['impl'], e['impl'])} | {e.get('device', '?')} | {e.get('dtype', '?')} | {e['n']:,} | "
            f"{fmt_time(s['median'])} | {fmt_rate(rate)} | {fmt_rate(best)} | {ratio} | {to_floor} | {s['rounds']} |"
        )
    note = ("traces/s = N / time per call; × reference = median traces/s over the reference's median traces/s in the same run; "
            "× copy floor's time = median time over that of copying the same bytes (read + write) on the same device in the same run.")
    return "\n".join(lines) + "\n\n" + note


def generic_table(doc: dict) -> str | None:
    rows = [b for b in doc.get("benchmarks", []) if not ("n" in b.get("extra_info", {}) and "impl" in b.get("extra_info", {}))]
    if not rows:
        return None
    lines = ["| benchmark | median | min | rounds | extra |", "|---|---:|---:|---:|---|"]
    for b in rows:
        s = b["stats"]
        extra = ", ".join(f"{k}={v}" for k, v in b.get("extra_info", {}).items())
        lines.append(f"| {b['name']} | {fmt_time(s['median'])} | {fmt_time(s['min'])} | {s['rounds']} | {extra} |")
    return "\n".join(lines)


def report(paths: list[Path]) -> str:
    out = []
    for path in paths:
        doc = json.loads(Path(path).read_text())
        out.append(f"### {Path(path).name}\n\n{machine_line(doc)}\n")
        for table in (simulator_table(doc), generic_table(doc)):
            if table:
                out.append(table + "\n")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", nargs="+", type=Path, help="pytest-benchmark --benchmark-json files")
    ap.add_argument("-o", "--output", type=Path, help="also write the markdown here")
    args = ap.parse_args(argv)
    text = report(args.json)
    print(text)
    if args.output:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
