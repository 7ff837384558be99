"""report.md: summary table, training, environment, config and every figure linked."""

from __future__ import annotations

import numpy as np
import pytest

from lif_sbi import diagnostics as d
from lif_sbi.priors import HIGH, LOW, N_PARAMS, PARAMETERS
from lif_sbi.report import REPORT_NAME, write_report


@pytest.fixture(scope="module")
def metrics():
    rng = np.random.default_rng(21)
    z = rng.standard_normal((60, N_PARAMS))
    draws = z[:, None, :] * 0.9 + 0.4 * rng.standard_normal((60, 40, N_PARAMS))
    to_si = lambda x: (LOW + HIGH) / 2 + (HIGH - LOW) / 10 * x  # noqa: E731
    m = d.compute_metrics(to_si(z), to_si(draws), num_null_draws=200)
    m["posterior_predictive"] = {
        "n_cases": 1,
        "level": 0.9,
        "coverage_mean": 0.95,
        "coverage_min": 0.95,
        "band_width_mean": 3.2,
        "unit": "mV",
        "cases": [{"label": "trace 0", "coverage": 0.95, "band_width_mean": 3.2, "rmse_median": 1.1, "n_draws": 100, "n_dropped": 2}],
    }
    return m


def fake_pngs(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        p = folder / name
        p.write_bytes(b"\x89PNG\r\n\x1a\n")  # the report only links figures
        paths.append(p)
    return paths


def test_report_has_table_links_and_sections(tmp_path, metrics):
    run = tmp_path / "20250101-quick"
    plots = fake_pngs(run, ["loss.png", "recovery.png", "sbc_ecdf.png"]) + fake_pngs(run / "extra", ["custom_plot.png"])
    config = "name: quick\nepochs: 3\n"
    path = write_report(
        run,
        config_text=config,
        environment={"python": "3.11.9", "keras": "3.15.1", "backend": "torch", "device": "cpu | 2 cores"},
        metrics=metrics,
        plots=plots,
        history={"loss": [3.0, 2.0, 1.0], "val_loss": [3.5, 2.5, 2.6], "learning_rate": [1e-3, 1e-3, 5e-4]},
        extra={"run_id": "20250101-quick", "train_time_s": 12.5},
    )
    assert path == run / REPORT_NAME
    text = path.read_text(encoding="utf-8")
    for link in ("](loss.png)", "](recovery.png)", "](sbc_ecdf.png)", "](extra/custom_plot.png)"):
        assert link in text
    assert text.count("![") == len(plots)
    # Summary table: header and one row per parameter, with display units.
    assert "| parameter | r | RMSE | cov. 50 % | cov. 90 % | SBC log γ | SBC | contraction |" in text
    for p in PARAMETERS:
        row = next(line for line in text.splitlines() if line.startswith(f"| {p.name} ("))
        assert p.display_unit in row
        m = metrics["parameters"][p.name]
        assert f"{m['r']:.3f}" in row and f"{m['coverage_90']:.2f}" in row
        assert ("pass" in row) if m["sbc_pass"] else ("fail" in row)
    assert "epochs run: 3" in text and "best 2.500 at epoch 2" in text
    assert "0.0005 at end" in text
    assert "| backend | torch |" in text and "cpu \\| 2 cores" in text
    assert "```\nname: quick\nepochs: 3\n```" in text
    assert "| run_id | 20250101-quick |" in text
    assert "Posterior-predictive check" in text and "95.0 %" in text
    assert not [p for p in run.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_report_without_history_or_extras(tmp_path, metrics):
    config = "note: ```fenced``` inside\n"
    path = write_report(tmp_path, config_text=config, environment={}, metrics=metrics, plots=[], history=None)
    text = path.read_text(encoding="utf-8")
    assert "No training history recorded." in text
    assert "````\n" + config + "````" in text  # longer fence than any run of backticks inside
    assert "![" not in text


def test_report_with_real_run_all_output(tmp_path):
    rng = np.random.default_rng(22)
    z = rng.standard_normal((40, N_PARAMS))
    draws = z[:, None, :] + 0.3 * rng.standard_normal((40, 30, N_PARAMS))
    to_si = lambda x: (LOW + HIGH) / 2 + (HIGH - LOW) / 10 * x  # noqa: E731
    metrics, plots = d.run_all(tmp_path / "diag", to_si(z), to_si(draws), history={"loss": [1.0, 0.5]})
    text = write_report(tmp_path, config_text="{}", environment={"x": 1}, metrics=metrics, plots=plots).read_text()
    for p in plots:
        assert f"](diag/{p.name})" in text
    assert "Simulation-based calibration" in text


def test_width_calibration_section_shows_what_was_rescaled(tmp_path, metrics):
    from lif_sbi import calibration, estimator

    rng = np.random.default_rng(5)
    truth = LOW + (HIGH - LOW) * rng.uniform(0.3, 0.7, (300, N_PARAMS))
    width = np.where(np.arange(N_PARAMS) == 2, 2.5, 1.0)  # only E_L too wide
    sd = 0.01 * (HIGH - LOW)
    mu = truth + sd * rng.standard_normal(truth.shape)
    draws = mu[:, None] + width * sd * rng.standard_normal((300, 200, N_PARAMS))
    record = calibration.fit(estimator.make_adapter(logit_bounds=False), draws, truth)
    text = write_report(tmp_path, config_text="", environment={}, metrics={**metrics, "calibration": record}, plots=[]).read_text()
    assert "## Width calibration" in text and "300 validation traces × 200 draws" in text
    (e_l,) = [line for line in text.splitlines() if line.startswith("| E_L |") and "×" in line]
    e_l_factors = np.atleast_1d(record["width_scale"]["E_L"])
    assert calibration.describe(e_l_factors) in e_l and e_l_factors.max() < 0.6
    (c_m,) = [line for line in text.splitlines() if line.startswith("| C_m |") and "fit:" in line]
    assert "| 1 (fit: ×" in c_m
