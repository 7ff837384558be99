"""The six LIF parameters, declared once, and the reference prior over them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Parameter:
    """One model parameter: SI unit inside the code, display unit and scale for people."""

    name: str
    meaning: str
    unit: str  # SI unit used in all computations
    display_unit: str  # unit shown in plots, tables and messages
    display_scale: float  # display value = SI value * display_scale
    low: float  # prior lower bound, SI
    high: float  # prior upper bound, SI

    def to_display(self, value):
        return value * self.display_scale


PARAMETERS: tuple[Parameter, ...] = (
    Parameter("C_m", "membrane capacitance", "F", "pF", 1e12, 100e-12, 200e-12),
    Parameter("g_L", "leak conductance", "S", "nS", 1e9, 5e-9, 15e-9),
    Parameter("E_L", "resting potential", "V", "mV", 1e3, -80e-3, -65e-3),
    Parameter("V_th", "spike threshold", "V", "mV", 1e3, -60e-3, -50e-3),
    Parameter("V_res", "reset potential", "V", "mV", 1e3, -80e-3, -70e-3),
    Parameter("t_ref", "refractory time", "s", "ms", 1e3, 1e-3, 5e-3),
)
PARAM_NAMES: tuple[str, ...] = tuple(p.name for p in PARAMETERS)
N_PARAMS = len(PARAMETERS)
LOW = np.array([p.low for p in PARAMETERS])  # (6,) SI
HIGH = np.array([p.high for p in PARAMETERS])  # (6,) SI
DISPLAY_SCALE = np.array([p.display_scale for p in PARAMETERS])  # (6,)
INDEX = {p.name: i for i, p in enumerate(PARAMETERS)}
REFERENCE_LOW, REFERENCE_HIGH = LOW.copy(), HIGH.copy()  # the reference study's bounds, SI

# Ordering repair of the reference study (part of the prior, DESIGN.md §2).
V_RES_SHIFT_V = 2e-3  # where V_res >= E_L: V_res = E_L - 2 mV
E_L_SHIFT_V = 5e-3  # where E_L >= V_th: E_L = V_th - 5 mV


def _repair(theta, where, clip):
    """Apply the ordering repair in place on columns of `theta` (NumPy or torch)."""
    e, th, r = INDEX["E_L"], INDEX["V_th"], INDEX["V_res"]
    theta[:, r] = where(theta[:, r] >= theta[:, e], theta[:, e] - V_RES_SHIFT_V, theta[:, r])
    theta[:, r] = clip(theta[:, r], LOW[r], HIGH[r])
    theta[:, e] = where(theta[:, e] >= theta[:, th], theta[:, th] - E_L_SHIFT_V, theta[:, e])
    theta[:, e] = clip(theta[:, e], LOW[e], HIGH[e])
    # With the reference bounds the E_L repair never fires (E_L <= -65 mV < -60 mV <= V_th) and
    # this second V_res pass changes nothing; a widened box (`set_box`) can move E_L below V_res.
    theta[:, r] = where(theta[:, r] >= theta[:, e], theta[:, e] - V_RES_SHIFT_V, theta[:, r])
    theta[:, r] = clip(theta[:, r], LOW[r], HIGH[r])
    return theta


def repair(theta) -> np.ndarray:
    """The prior's ordering repair (with its clipping) applied to a copy of theta (..., 6) in SI units:
    what the prior does to its own uniform draws; rows already in the support stay as they are."""
    theta = np.array(theta, dtype=np.float64)  # a copy
    flat = theta.reshape(-1, N_PARAMS)
    _repair(flat, np.where, np.clip)
    return flat.reshape(theta.shape)


#: The priors a configuration may name (`prior.kind`):
#: - "reference": the study's: independent uniforms in the bounds, then the ordering repair (which
#:   puts a third of its mass on the line V_res = E_L - 2 mV and 12 % exactly at V_res = -80 mV, so
#:   it has no density);
#: - "ordered": the same box restricted to V_res <= E_L - 2 mV by rejection: uniform there, with
#:   a density (`log_prior`), so exact (MCMC) reference posteriors exist for it.
PRIOR_KINDS: tuple[str, ...] = ("reference", "ordered")


def _check_kind(kind: str) -> str:
    if kind not in PRIOR_KINDS:
        raise ValueError(f"prior kind must be one of {', '.join(PRIOR_KINDS)}; got {kind!r}")
    return kind


def sample_prior(n: int, rng: np.random.Generator | int | None = None, *, kind: str = "reference") -> np.ndarray:
    """Draw `n` parameter vectors from the prior `kind` (PRIOR_KINDS).

    Returns theta: (n, 6) float64 in SI units, columns in `PARAM_NAMES` order.
    """
    n = _check_n(n)
    rng = np.random.default_rng(rng)
    if _check_kind(kind) == "reference":
        theta = rng.uniform(LOW, HIGH, size=(n, N_PARAMS))
        return _repair(theta, np.where, np.clip)
    parts, have = [], 0
    while have < n:  # rejection: about 53 % of the box's draws are kept
        box = rng.uniform(LOW, HIGH, size=(2 * (n - have) + 16, N_PARAMS))
        box = box[_ordered(box)]
        parts.append(box)
        have += len(box)
    return np.concatenate(parts)[:n]


def sample_prior_torch(
    n: int,
    generator: torch.Generator | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
    kind: str = "reference",
) -> torch.Tensor:
    """Draw `n` parameter vectors from the prior `kind` on `device` with torch's RNG.

    Returns theta: (n, 6) tensor in SI units. Same distribution as `sample_prior`
    (different random stream).
    """
    n = _check_n(n)
    if _check_kind(kind) == "reference":
        theta = _uniform_box(n, generator, device)
        theta = _repair(theta, torch.where, lambda x, lo, hi: torch.clamp(x, float(lo), float(hi)))
        return theta.to(dtype)
    parts, have = [], 0
    while have < n:
        box = _uniform_box(2 * (n - have) + 16, generator, device)
        box = box[torch.as_tensor(_ordered(box.cpu().numpy()), device=box.device)]
        parts.append(box)
        have += len(box)
    return torch.cat(parts)[:n].to(dtype)


def _uniform_box(n: int, generator, device) -> torch.Tensor:
    u = torch.rand((n, N_PARAMS), generator=generator, device=device, dtype=torch.float64)
    low = torch.as_tensor(LOW, device=u.device)
    high = torch.as_tensor(HIGH, device=u.device)
    return low + u * (high - low)


def _ordered(theta) -> np.ndarray:
    """(..., 6) → bool (...): V_res <= E_L - 2 mV and E_L < V_th, the "ordered" prior's restriction
    of the box (E_L < V_th holds throughout the reference box; a widened one needs it)."""
    theta = np.asarray(theta)
    e = theta[..., INDEX["E_L"]]
    return (theta[..., INDEX["V_res"]] <= e - V_RES_SHIFT_V) & (e < theta[..., INDEX["V_th"]])


def _ordered_log_volume() -> float:
    """log of the "ordered" prior's support volume (SI units): the box's volume times the share of
    it where V_res <= E_L - 2 mV. Closed form for these bounds, where V_res + 2 mV stays inside
    E_L's range: the share is (E_L_high - 2 mV - mean V_res) / (E_L_high - E_L_low)."""
    e, r = INDEX["E_L"], INDEX["V_res"]
    if not (LOW[e] <= LOW[r] + V_RES_SHIFT_V and HIGH[r] + V_RES_SHIFT_V <= HIGH[e] and HIGH[e] < LOW[INDEX["V_th"]]):
        raise ValueError("the ordered prior's density is known in closed form for the reference box only (priors.set_box widened it)")
    share = (HIGH[e] - V_RES_SHIFT_V - 0.5 * (LOW[r] + HIGH[r])) / (HIGH[e] - LOW[e])
    return float(np.sum(np.log(HIGH - LOW)) + np.log(share))


def log_prior(theta, *, kind: str = "ordered") -> np.ndarray:
    """(..., 6) SI → (...) log density of the prior `kind` (-inf outside its support). Only the
    "ordered" prior has a density; the reference prior's repair gives it none (see PRIOR_KINDS)."""
    if _check_kind(kind) != "ordered":
        raise ValueError("the reference prior has no density (its ordering repair puts mass on a line and a point); use kind='ordered'")
    theta = np.asarray(theta, dtype=np.float64)
    inside = np.all((theta >= LOW) & (theta <= HIGH), axis=-1) & _ordered(theta)
    return np.where(inside, -_ordered_log_volume(), -np.inf)


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return int(n)


# The ordering repair piles prior mass onto one bound: V_res = -80 mV, wherever E_L - 2 mV falls
# below V_res's range (about 12 % of draws). (The E_L repair never fires with these ranges:
# E_L <= -65 mV < -60 mV <= V_th.) A flow can only smear such an atom. (index, bound) pairs, per
# prior kind ("ordered" has none):
ATOMS = [(INDEX["V_res"], float(LOW[INDEX["V_res"]]))]
_ATOMS = {"reference": ATOMS, "ordered": ()}


def set_box(overrides: dict[str, tuple[float, float]] | None = None) -> None:
    """Make the prior's box this process's: the reference bounds, with `overrides` ({name: (low,
    high)} in display units, e.g. {"E_L": (-80.0, -35.0)}) in their place (`prior.<name>` in a
    configuration). LOW, HIGH, PARAMETERS' bounds and ATOMS change in place, so every module that
    imported them sees the new box: one box per process, set from the run's configuration before
    anything is drawn (the training run's start, `lif_sbi.load`). No arguments: the reference box."""
    LOW[:], HIGH[:] = REFERENCE_LOW, REFERENCE_HIGH
    for name, (lo, hi) in (overrides or {}).items():
        i = INDEX[name]
        LOW[i], HIGH[i] = lo / DISPLAY_SCALE[i], hi / DISPLAY_SCALE[i]
    for p, lo, hi in zip(PARAMETERS, LOW, HIGH):  # frozen for everyone else; the box is set only here
        object.__setattr__(p, "low", float(lo))
        object.__setattr__(p, "high", float(hi))
    ATOMS[:] = [(INDEX["V_res"], float(LOW[INDEX["V_res"]]))]


def box_overrides() -> dict[str, tuple[float, float]]:
    """The parameters whose bounds differ from the reference's now, {name: (low, high)} in display units."""
    def shown(x):  # display units, rounded past the SI round trip's last bits (15 nS -> 14.999999999999998)
        return float(f"{x:.12g}")

    return {p.name: (shown(LOW[i] * DISPLAY_SCALE[i]), shown(HIGH[i] * DISPLAY_SCALE[i]))
            for i, p in enumerate(PARAMETERS) if LOW[i] != REFERENCE_LOW[i] or HIGH[i] != REFERENCE_HIGH[i]}


def onto_atoms(theta, *, kind: str = "reference") -> np.ndarray:
    """Move values beyond a bound that carries a prior atom (see ATOMS) onto that bound (copy)."""
    theta = np.array(theta, dtype=np.float64)
    for i, bound in _ATOMS[_check_kind(kind)]:
        col = theta[..., i]
        theta[..., i] = np.maximum(col, bound) if bound == LOW[i] else np.minimum(col, bound)
    return theta


def in_support(theta, *, kind: str = "reference") -> np.ndarray:
    """(..., 6) → bool (...): inside the prior's support: the bounds, ordered V_res < E_L < V_th, and
    for the "ordered" prior V_res <= E_L - 2 mV."""
    theta = np.asarray(theta)
    inside = np.all((theta >= LOW) & (theta <= HIGH), axis=-1)
    e, th, r = theta[..., INDEX["E_L"]], theta[..., INDEX["V_th"]], theta[..., INDEX["V_res"]]
    inside = inside & (r < e) & (e < th)
    return inside & _ordered(theta) if _check_kind(kind) == "ordered" else inside


def check_theta(theta: np.ndarray, *, name: str = "theta") -> None:
    """Raise ValueError unless `theta` (N, 6) is finite, inside the prior's support and ordered.

    The support is the box of bounds with V_res < E_L < V_th (after the ordering repair the
    prior never produces anything else).
    """
    theta = np.asarray(theta)
    if theta.ndim != 2 or theta.shape[1] != N_PARAMS:
        raise ValueError(f"{name} must have shape (N, {N_PARAMS}) with columns {', '.join(PARAM_NAMES)}; got {theta.shape}")
    if theta.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one parameter vector; got shape {theta.shape}")
    if not np.all(np.isfinite(theta)):
        row, col = np.argwhere(~np.isfinite(theta))[0]
        raise ValueError(f"{name}[{row}] {PARAM_NAMES[col]} is {theta[row, col]}; expected a finite value")
    # Relative slack so values converted from float32 or display units stay accepted.
    slack = 1e-6 * (HIGH - LOW)
    for i, p in enumerate(PARAMETERS):
        bad = (theta[:, i] < p.low - slack[i]) | (theta[:, i] > p.high + slack[i])
        if bad.any():
            row = int(np.argmax(bad))
            raise ValueError(
                f"{name}[{row}] {p.name} = {p.to_display(theta[row, i]):.6g} {p.display_unit} is outside "
                f"the prior's support [{p.to_display(p.low):g}, {p.to_display(p.high):g}] {p.display_unit}"
            )
    e, th, r = theta[:, INDEX["E_L"]], theta[:, INDEX["V_th"]], theta[:, INDEX["V_res"]]
    bad = ~((r < e) & (e < th))
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(
            f"{name}[{row}] violates V_res < E_L < V_th: V_res = {r[row] * 1e3:.6g} mV, "
            f"E_L = {e[row] * 1e3:.6g} mV, V_th = {th[row] * 1e3:.6g} mV"
        )
