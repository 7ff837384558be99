"""What `lif_sbi.infer` writes: draws, summary table, verdicts, an ArviZ file and plots, into a folder that appears only when complete."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .files import WRITING
from .priors import PARAMETERS

QUANTILES = (0.05, 0.5, 0.95)
PAIRS_PLOTS = 1  # pairs plots (BayesFlow's, about 8 s each on 2 cores) for the first this many traces with a valid posterior
PAIRS_DRAWS = 500  # draws shown in a pairs plot (its kernel-density panels cost time per draw)
PPC_PANELS = 16  # posterior-predictive panels (traces) at most
PPC_DRAWS = 200  # posterior draws simulated per trace for its predictive band


@dataclass
class Inference:
    """One call's answer. names: (N,) trace names. draws: (N, S, 6) SI. valid: (N,) bool.
    reasons: per trace, why it has no valid posterior. spikes: (N,) action potentials detected.
    ppc: posterior-predictive results (diagnostics.posterior_predictive), one per plotted trace."""

    names: list[str]
    draws: np.ndarray
    valid: np.ndarray
    reasons: list[list[str]]
    spikes: np.ndarray
    meta: dict
    ppc: list[dict]


def check_target(out: Path, force: bool) -> None:
    """InputError when `out` exists and may not be replaced (before any work is done)."""
    if out.exists() and not force:
        raise InputError(f"{out}: exists; pass --force to replace it, or --out another folder")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: is a file; --out names a folder")


def summary_rows(inf: Inference) -> list[dict]:
    """One row per trace and parameter, in display units: mean, sd and the QUANTILES (valid traces only)."""
    rows = []
    for n, name in enumerate(inf.names):
        if not inf.valid[n]:
            continue
        for i, p in enumerate(PARAMETERS):
            d = p.to_display(inf.draws[n, :, i])
            q = np.quantile(d, QUANTILES)
            rows.append({"trace": name, "parameter": p.name, "mean": d.mean(), "sd": d.std(ddof=1), "q5": q[0], "q50": q[1], "q95": q[2],
                         "unit": p.display_unit})
    return rows


def table(inf: Inference) -> str:
    """The printed summary: a verdict per trace, then its parameters (mean, sd, 5/50/95 %)."""
    out = io.StringIO()
    rows = summary_rows(inf)
    for n, name in enumerate(inf.names):
        spikes = f", {inf.spikes[n]} action potential(s)" if inf.spikes[n] else ""
        if not inf.valid[n]:
            out.write(f"{name}: NO VALID POSTERIOR{spikes}\n" + "".join(f"    - {r}\n" for r in inf.reasons[n]))
            continue
        out.write(f"{name}: explained by an LIF with these priors (passes every check{spikes})\n")
        out.write(f"    {'parameter':<9} {'mean':>9} {'sd':>8} {'5 %':>9} {'50 %':>9} {'95 %':>9}  unit\n")
        for r in (r for r in rows if r["trace"] == name):
            out.write(f"    {r['parameter']:<9} {r['mean']:>9.4g} {r['sd']:>8.3g} {r['q5']:>9.4g} {r['q50']:>9.4g} {r['q95']:>9.4g}  {r['unit']}\n")
    return out.getvalue()


def _csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)


def _draws_csv(path: Path, inf: Inference) -> None:
    cols = [f"{p.name}_{p.display_unit}" for p in PARAMETERS]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trace", "draw", *cols])
        for n in np.flatnonzero(inf.valid):
            disp = inf.draws[n] * np.array([p.display_scale for p in PARAMETERS])
            w.writerows([inf.names[n], s, *(f"{x:.6g}" for x in row)] for s, row in enumerate(disp))


def _arviz(path: Path, inf: Inference) -> None:
    """An ArviZ InferenceData (posterior group: one chain, dims draw x trace, SI units) as NetCDF."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ announces its coming refactor at import
        import arviz as az

    keep = np.flatnonzero(inf.valid)
    posterior = {p.name: inf.draws[keep, :, i].T[None] for i, p in enumerate(PARAMETERS)}  # (chain, draw, trace)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idata = az.from_dict(posterior=posterior, coords={"trace": [inf.names[k] for k in keep]},
                             dims={p.name: ["trace"] for p in PARAMETERS},
                             attrs={"units": json.dumps({p.name: p.unit for p in PARAMETERS}), **{k: str(v) for k, v in inf.meta.items()}})
        idata.to_netcdf(str(path), engine="h5netcdf")


def _plots(folder: Path, inf: Inference) -> list[str]:
    """Pairs plots (BayesFlow's) of the first valid traces and the posterior-predictive figure."""
    from .diagnostics import _common, plot_posterior_predictive

    folder.mkdir()
    made = []
    import bayesflow as bf
    import matplotlib.pyplot as plt

    for n in np.flatnonzero(inf.valid)[:PAIRS_PLOTS]:
        disp = inf.draws[n, :PAIRS_DRAWS] * np.array([p.display_scale for p in PARAMETERS])
        with _common._quiet_bayesflow(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            grid = bf.diagnostics.plots.pairs_posterior(disp, variable_names=[f"{p.name} [{p.display_unit}]" for p in PARAMETERS])
        grid.figure.suptitle(f"posterior: {inf.names[n]}", y=1.01)
        grid.figure.savefig(folder / f"pairs_{n}.png", dpi=90, bbox_inches="tight")
        plt.close(grid.figure)
        made.append(f"plots/pairs_{n}.png")
    if inf.ppc:
        plot_posterior_predictive(inf.ppc, folder / "posterior_predictive.png")
        made.append("plots/posterior_predictive.png")
    return made


def write(out: Path, inf: Inference, *, force: bool) -> list[str]:
    """Everything into a temporary folder beside `out`, then moved into place (replacing an
    existing `out` only with `force`). Returns the files written, relative to `out`."""
    out = Path(out)
    check_target(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        names = np.array(inf.names)
        draws = np.where(inf.valid[:, None, None], inf.draws, np.nan)
        np.savez(tmp / "draws.npz", draws=draws, names=names, valid=inf.valid, parameters=np.array([p.name for p in PARAMETERS]),
                 units=np.array([p.unit for p in PARAMETERS]), spikes=inf.spikes)
        _draws_csv(tmp / "draws.csv", inf)
        _csv(tmp / "summary.csv", summary_rows(inf), ["trace", "parameter", "mean", "sd", "q5", "q50", "q95", "unit"])
        (tmp / "summary.txt").write_text(table(inf))
        verdicts = [{"trace": name, "valid": bool(inf.valid[n]), "reasons": inf.reasons[n], "action_potentials": int(inf.spikes[n])}
                    for n, name in enumerate(inf.names)]
        files = ["draws.npz", "draws.csv", "summary.csv", "summary.txt", "verdicts.json"]
        if inf.valid.any():
            _arviz(tmp / "posterior.nc", inf)
            files.append("posterior.nc")
        files += _plots(tmp / "plots", inf)
        (tmp / "verdicts.json").write_text(json.dumps({"meta": inf.meta, "traces": verdicts}, indent=2) + "\n")
        old = None
        if out.exists():  # --force: the old folder moves aside and goes only once the new one is in place
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        if isinstance(exc, OSError):  # name the file as the user will look for it, not its temporary folder
            exc.filename = str(exc.filename or out).replace(str(tmp), str(out))
            exc.add_note(WRITING)
        raise
    return files
