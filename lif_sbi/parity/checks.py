"""One parity check (a row of the report) and how its figures are formatted."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Check:
    level: int
    comparison: str  # e.g. "torch → tensorflow" or "torch vs tensorflow"
    quantity: str
    figure: float | None
    threshold: float | None
    op: str  # "≤", "≥", "==" or "" (information)
    passed: bool
    note: str = ""

    def row(self) -> str:
        fig = "n/a" if self.figure is None else _fmt(self.figure)
        thr = "" if self.threshold is None else f"{self.op} {_fmt(self.threshold)}"
        status = "pass" if self.passed else "**FAIL**"
        return f"| {self.level} | {self.comparison} | {_cell(self.quantity)} | {fig} | {thr} | {status} | {_cell(self.note)} |"


def _cell(text: str) -> str:
    """Text for a Markdown table cell: a bare | (as in |Δr|) would end the cell."""
    return text.replace("|", "\\|")


def _fmt(x: float) -> str:
    if isinstance(x, bool):
        return str(x)
    if x == 0:
        return "0"
    if not math.isfinite(x):
        return str(x)
    return f"{x:.3g}" if 1e-3 <= abs(x) < 1e4 else f"{x:.2e}"


def _le(level, comparison, quantity, figure, threshold, note="") -> Check:
    ok = figure is not None and math.isfinite(figure) and figure <= threshold
    return Check(level, comparison, quantity, figure, threshold, "≤", ok, note)
