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
    return theta


def repair(theta) -> np.ndarray:
    """The prior's ordering repair (with its clipping) applied to a copy of theta (..., 6) in SI units:
    what the prior does to its own uniform draws; rows already in the support stay as they are."""
    theta = np.array(theta, dtype=np.float64)  # a copy
    flat = theta.reshape(-1, N_PARAMS)
    _repair(flat, np.where, np.clip)
    return flat.reshape(theta.shape)


def sample_prior(n: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Draw `n` parameter vectors from the reference prior.

    Returns theta: (n, 6) float64 in SI units, columns in `PARAM_NAMES` order.
    """
    n = _check_n(n)
    rng = np.random.default_rng(rng)
    theta = rng.uniform(LOW, HIGH, size=(n, N_PARAMS))
    return _repair(theta, np.where, np.clip)


def sample_prior_torch(
    n: int,
    generator: torch.Generator | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Draw `n` parameter vectors on `device` with torch's RNG.

    Returns theta: (n, 6) tensor in SI units. Same distribution as `sample_prior`
    (different random stream).
    """
    n = _check_n(n)
    u = torch.rand((n, N_PARAMS), generator=generator, device=device, dtype=torch.float64)
    low = torch.as_tensor(LOW, device=u.device)
    high = torch.as_tensor(HIGH, device=u.device)
    theta = low + u * (high - low)
    theta = _repair(theta, torch.where, lambda x, lo, hi: torch.clamp(x, float(lo), float(hi)))
    return theta.to(dtype)


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return int(n)


# The ordering repair piles prior mass onto one bound: V_res = -80 mV, wherever E_L - 2 mV falls
# below V_res's range (about 12 % of draws). (The E_L repair never fires with these ranges:
# E_L <= -65 mV < -60 mV <= V_th.) A flow can only smear such an atom. (index, bound) pairs:
ATOMS = ((INDEX["V_res"], LOW[INDEX["V_res"]]),)


def onto_atoms(theta) -> np.ndarray:
    """Move values beyond a bound that carries a prior atom (see ATOMS) onto that bound (copy)."""
    theta = np.array(theta, dtype=np.float64)
    for i, bound in ATOMS:
        col = theta[..., i]
        theta[..., i] = np.maximum(col, bound) if bound == LOW[i] else np.minimum(col, bound)
    return theta


def in_support(theta) -> np.ndarray:
    """(..., 6) → bool (...): inside the prior's bounds and ordered V_res < E_L < V_th."""
    theta = np.asarray(theta)
    inside = np.all((theta >= LOW) & (theta <= HIGH), axis=-1)
    e, th, r = theta[..., INDEX["E_L"]], theta[..., INDEX["V_th"]], theta[..., INDEX["V_res"]]
    return inside & (r < e) & (e < th)


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
