"""One-page Markdown report of a run: summary table, training, environment, config, figures.

Pure text formatting by hand (no library writes this page); the numbers come from
`lif_sbi.diagnostics.compute_metrics` / `run_all`, names and units from `lif_sbi.priors`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from . import features
from .calibration import describe
from .files import atomic_write_text
from .priors import PARAMETERS

REPORT_NAME = "report.md"

# Titles of the figures `diagnostics.run_all` writes, by file stem; others get their stem.
PLOT_TITLES = {
    "loss": "Training and validation loss",
    "recovery": "Recovery: posterior mean (90 % interval) vs truth",
    "sbc_ecdf": "Simulation-based calibration: rank ECDF difference with 95 % bands",
    "z_score_contraction": "Posterior z-score vs posterior contraction",
    "coverage": "Coverage of the central 50 % and 90 % intervals",
    "coverage_curve": "Coverage difference over all central interval widths",
    "prior_histograms": "Prior draws",
    "example_traces": "Example traces: min / median / max of each parameter",
    "posterior_predictive": "Posterior-predictive check on test traces",
}


def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if not math.isfinite(x):
            return "–"
        if x != 0 and (abs(x) >= 1e4 or abs(x) < 1e-3):
            return f"{x:.{digits}g}"
        return f"{x:.{digits}f}"
    return str(x)


def _log_gamma(x) -> str:
    # compute_metrics floors log-gamma at log(5e-324) ~ -744 where gamma underflows to 0.
    if x is not None and x < -700:
        return "< −700"
    return _fmt(x, 2)


def _summary_table(metrics: Mapping) -> list[str]:
    per = metrics.get("parameters", {})
    agg = metrics.get("aggregate", {})
    lines = [
        "| parameter | r | RMSE | cov. 50 % | cov. 90 % | SBC log γ | SBC | contraction | calib. err. | z mean / sd |",
        "|---|---:|---:|---:|---:|---:|:---:|---:|---:|---:|",
    ]
    for p in PARAMETERS:
        m = per.get(p.name)
        if m is None:
            continue
        sbc = "pass" if m.get("sbc_pass") else "**fail**"
        lines.append(
            f"| {p.name} ({p.meaning}) | {_fmt(m.get('r'))} | {_fmt(m.get('rmse'))} {p.display_unit} "
            f"| {_fmt(m.get('coverage_50'), 2)} | {_fmt(m.get('coverage_90'), 2)} | {_log_gamma(m.get('log_gamma'))} "
            f"| {sbc} | {_fmt(m.get('contraction'), 2)} | {_fmt(m.get('calibration_error'))} "
            f"| {_fmt(m.get('z_mean'), 2)} / {_fmt(m.get('z_sd'), 2)} |"
        )
    lines.append("")
    if agg:
        n, s = agg.get("n_datasets"), agg.get("n_draws")
        tol50 = agg.get("coverage_50_tolerance") or [None, None]
        tol90 = agg.get("coverage_90_tolerance") or [None, None]
        lines += [
            f"On {n} test traces with {s} posterior draws each. "
            f"A calibrated posterior shows coverage in [{_fmt(tol50[0], 2)}, {_fmt(tol50[1], 2)}] (50 %) and "
            f"[{_fmt(tol90[0], 2)}, {_fmt(tol90[1], 2)}] (90 %) 95 % of the time. "
            f"SBC passes where log γ > 0, i.e. the rank ECDF is no more extreme than the "
            f"{_fmt(agg.get('sbc_quantile'), 2)} quantile of its null distribution under uniform ranks "
            f"(Modrák et al. 2025, BayesFlow's `calibration_log_gamma`): "
            f"{agg.get('sbc_n_pass')} of {len(per)} parameters pass. "
            "r: Pearson correlation of posterior mean and truth; RMSE of the posterior mean in display units; "
            "contraction: 1 − posterior variance / prior variance (median); "
            "z: (posterior mean − truth) / posterior sd (mean and sd over test traces; ideal 0 / 1).",
            "",
        ]
    return lines


def _ppc_section(ppc: Mapping) -> list[str]:
    lines = [
        "## Posterior-predictive check",
        "",
        f"{ppc.get('n_cases')} test traces: on average {_fmt(100 * ppc['coverage_mean'], 1)} % of the observed samples "
        f"lie inside the central {_fmt(100 * ppc['level'], 0)} % predictive band (lowest {_fmt(100 * ppc['coverage_min'], 1)} %); "
        f"mean band width {_fmt(ppc.get('band_width_mean'), 2)} {ppc.get('unit', '')}.",
        "",
    ]
    cases = ppc.get("cases") or []
    if cases:
        lines += ["| trace | inside band | band width | RMSE of median | draws (dropped) |", "|---|---:|---:|---:|---:|"]
        for k, c in enumerate(cases):
            lines.append(
                f"| {c.get('label') or k} | {_fmt(100 * c['coverage'], 1)} % | {_fmt(c.get('band_width_mean'), 2)} {ppc.get('unit', '')} "
                f"| {_fmt(c.get('rmse_median'), 2)} {ppc.get('unit', '')} | {c.get('n_draws')} ({c.get('n_dropped')}) |"
            )
        lines.append("")
    return lines


def _spike_section(spikes: Mapping) -> list[str]:
    if not spikes.get("spikes_observed"):
        return ["## Spike times", "", f"No spikes in the {spikes.get('n_traces')} test traces checked.", ""]
    return [
        "## Spike times",
        "",
        f"{spikes['spikes_inside']} of the {spikes['spikes_observed']} spikes of {spikes['n_traces']} test traces "
        f"({_fmt(100 * spikes['share_inside'], 1)} %) lie inside the central {_fmt(100 * spikes['level'], 0)} % interval "
        f"of the predicted time of that spike ({spikes['draws_per_trace']} posterior draws per trace simulated with the "
        "trace's own current; a draw without that spike counts as spiking after the window).",
        "",
    ]


def _calibration_section(record: Mapping) -> list[str]:
    fitted = record["fitted_on"]
    lines = [
        "## Width calibration",
        "",
        f"Fitted on {fitted['validation_traces']} validation traces × {fitted['draws_per_trace']} draws (not the test "
        f"traces above). A parameter is rescaled only where its validation 90 % coverage differs from 0.90 "
        f"(binomial test, α = {fitted['alpha']}); the coverage above is after rescaling. A range is the factor "
        f"at the 5 % and at the 95 % central level: wider outer intervals for errors heavier-tailed than the "
        f"flow's draws (lif_sbi.calibration).",
        "",
        "| parameter | validation 50 % / 90 % before | p (90 %) | factor | validation 50 % / 90 % after |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, c in record["validation_coverage"].items():
        factor = describe(record["width_scale"][name]) if c["applied"] else f"1 (fit: {describe(c['fitted_factor'])})"
        lines.append(f"| {name} | {_fmt(c['before_50'], 2)} / {_fmt(c['before_90'], 2)} | {c['p_value_90']:.2g} | {factor} "
                     f"| {_fmt(c['after_50'], 2)} / {_fmt(c['after_90'], 2)} |")
    return lines + [""]


def _training_section(history: Mapping | None) -> list[str]:
    lines = ["## Training", ""]
    history = dict(history or {})
    loss = [float(v) for v in history.get("loss") or []]
    if not loss:
        return lines + ["No training history recorded.", ""]
    lines.append(f"- epochs run: {len(loss)}")
    lines.append(f"- final training loss: {_fmt(loss[-1])} (best {_fmt(min(loss))})")
    val = [float(v) for v in history.get("val_loss") or []]
    if val:
        best = min(range(len(val)), key=lambda i: val[i] if math.isfinite(val[i]) else math.inf)
        lines.append(f"- final validation loss: {_fmt(val[-1])}; best {_fmt(val[best])} at epoch {best + 1}")
    for key in ("learning_rate", "lr"):
        lr = history.get(key)
        if lr:
            lines.append(f"- learning rate: {_fmt(float(lr[0]))} at start, {_fmt(float(lr[-1]))} at end")
            break
    lines.append("")
    return lines


def _key_values(title: str, items: Mapping | None) -> list[str]:
    lines = [f"## {title}", ""]
    if not items:
        return lines + ["(none recorded)", ""]
    lines += ["| key | value |", "|---|---|"]
    for k, v in items.items():
        text = _fmt(v) if isinstance(v, (int, float, bool)) or v is None else str(v)
        text = text.replace("|", "\\|").replace("\n", " ")  # keep the table intact
        lines.append(f"| {k} | {text} |")
    lines.append("")
    return lines


def write_report(
    run_dir,
    *,
    config_text: str,
    environment: Mapping,
    metrics: Mapping,
    plots: Sequence,
    history: Mapping | None = None,
    extra: Mapping | None = None,
    title: str | None = None,
) -> Path:
    """Write `run_dir/report.md` atomically and return its path.

    config_text: the run's configuration as text (shown verbatim); environment: {name: value}
    (versions, backend, device...); metrics: `compute_metrics`/`run_all` output; plots: PNG paths
    (embedded with links relative to run_dir); history: Keras History.history dict; extra:
    further {name: value} lines for the run summary (run id, wall times, notes...).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title or 'LIF posterior estimation: run ' + run_dir.name}", ""]
    if extra:
        lines += _key_values("Run", extra)
    lines += ["## Recovery and calibration", ""]
    lines += _summary_table(metrics)
    if metrics.get("calibration"):
        lines += _calibration_section(metrics["calibration"])
    if metrics.get("posterior_predictive"):
        lines += _ppc_section(metrics["posterior_predictive"])
    if metrics.get("spike_times"):
        lines += _spike_section(metrics["spike_times"])
    lines += _training_section(history)
    lines += ["## Figures", ""]
    for p in plots:
        p = Path(p)
        rel = Path(os.path.relpath(p.resolve(), run_dir.resolve())).as_posix()
        caption = PLOT_TITLES.get(p.stem, p.stem.replace("_", " "))
        lines += [f"### {caption}", "", f"![{caption}]({rel})", ""]
    lines += _key_values("Environment", environment)
    fence = "```"
    while fence in (config_text or ""):
        fence += "`"
    lines += ["## Configuration", "", fence, (config_text or "").rstrip("\n"), fence, ""]
    return atomic_write_text(run_dir / REPORT_NAME, "\n".join(lines))


def run_lines(run_id: str, config, backend: str, device: str, metrics: Mapping, simulator_device: str) -> dict:
    """The report's "Run" table: what ran where, and how long each stage took (timings.json)."""
    t = metrics["timings"]
    return {
        "run id": run_id, "configuration": config.name, "backend": backend, "device": device,
        "data": _data_line(config),
        "training step": metrics["training_step"],
        "simulation": (f"loaded from the cache in {t['simulation_s']:.1f} s" if t.get("data_from_cache")
                       else f"{t['simulation_s']:.1f} s on {simulator_device}"),
        "training": f"{t['training_s']:.1f} s",
        "starts": _starts_line(t.get("starts", [])),
        **({"width calibration": f"{t['calibration_s']:.1f} s"} if "calibration_s" in t else {}),
        "diagnostics": f"{t['diagnostics_s']:.1f} s", "total": f"{t['total_s']:.1f} s",
        "posterior widths": _widths_line(metrics.get("calibration")),
    }


def _starts_line(starts: list[dict]) -> str:
    """Every start of the run (timings.json's "starts"): when, and from which epoch."""
    def one(st):
        return f"new at {st['utc']}" if st["kind"] == "new" else f"--resume at {st['utc']} after epoch {st['after_epoch']}"
    return f"{len(starts)}: " + "; ".join(one(st) for st in starts) if starts else "1"


def _data_line(config) -> str:
    """What the traces are: protocol, window, step, observed current, noise, prior."""
    st = config.stimulus
    return (f"{' + '.join(st.protocols)} current, {st.duration_s * 1e3:g} ms at {st.dt_s * 1e3:g} ms ({st.n_samples} samples), "
            f"current {'observed' if config.model.observe_current else 'not observed'} by the estimator"
            f"{_feature_words(config.model)}, "
            f"recording noise {config.noise.sd_v * 1e3:g} mV, prior '{config.prior.kind}'")


def _feature_words(model) -> str:
    """What the flow sees beside the summary: the leak fits and the spike times, if any."""
    words = []
    if model.leak_features:
        lags = "" if model.leak_scales == 1 else f" at lags of {', '.join(str(k) for k in features.lags(model.leak_scales))} samples"
        words.append(f"a least-squares fit of the membrane equation{lags}, model.leak_features")
    if model.spike_features:
        words.append("the spike times and the mean current before each, model.spike_features")
    return f" (and {'; '.join(words)})" if words else ""


def _widths_line(record: Mapping | None) -> str:
    if record is None:
        return "as trained (training.calibrate_widths = false)"
    factors = ", ".join(f"{k} {describe(v)}" for k, v in record["width_scale"].items())
    return (f"rescaled per parameter, fitted on {record['fitted_on']['validation_traces']} validation traces "
            f"(calibration.json; the figures below are after it): {factors}")


def console_summary(run_dir: Path, metrics: Mapping) -> str:
    """The table the training command prints at the end: r, coverage, SBC (and width factor) per parameter."""
    cal = metrics.get("calibration")
    lines = [f"\n{'parameter':<10}{'r':>8}{'cov50':>8}{'cov90':>8}  SBC" + ("   width factor" if cal else "")]
    for p in PARAMETERS:
        m = metrics["parameters"][p.name]
        r = "n/a" if m["r"] is None else f"{m['r']:.3f}"
        factor = f"   {describe(cal['width_scale'][p.name])}" if cal else ""
        lines.append(f"{p.name:<10}{r:>8}{m['coverage_50']:>8.2f}{m['coverage_90']:>8.2f}  {'pass' if m['sbc_pass'] else 'FAIL'}{factor}")
    t = metrics["timings"]
    lines.append(f"total {t['total_s']:.0f} s (training {t['training_s']:.0f} s); report: {Path(run_dir) / REPORT_NAME}")
    return "\n".join(lines)


__all__ = ["REPORT_NAME", "console_summary", "run_lines", "write_report"]
