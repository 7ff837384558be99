"""The reference LIF simulator: a plain NumPy definition and a batched, vectorised torch one."""

from __future__ import annotations

import math

import numpy as np
import torch

from .priors import INDEX, N_PARAMS, check_theta, sample_prior, sample_prior_torch
from .stimulus import DT_S, N_SAMPLES, sample_current


def simulate_reference(theta, current, dt: float = DT_S) -> np.ndarray:
    """Forward-Euler LIF with reset and refractory clamp, one trace at a time (DESIGN.md §2).

    theta: (6,) or (N, 6) in SI units; current: (501,) or (N, 501) in A.
    Returns V: (501,) or (N, 501) in V, float64. This is the definition the fast path is
    tested against; it is deliberately written as literally as the model's text.
    """
    theta = np.asarray(theta, dtype=np.float64)
    current = np.asarray(current, dtype=np.float64)
    if theta.ndim == 1:
        return simulate_reference(theta[None], current[None], dt)[0]
    n_steps = current.shape[1]
    t = np.arange(n_steps) * dt
    out = np.empty((theta.shape[0], n_steps))
    for k, (c_m, g_l, e_l, v_th, v_res, t_ref) in enumerate(theta):
        i_k = current[k]
        v = np.empty(n_steps)
        v[0] = e_l
        t_last = -np.inf
        for i in range(1, n_steps):
            if t[i] - t_last < t_ref:
                v[i] = v_res
                continue
            v[i] = v[i - 1] + (-(v[i - 1] - e_l) + i_k[i - 1] / g_l) * dt * g_l / c_m
            if v[i] >= v_th:
                v[i] = v_res
                t_last = t[i]
        out[k] = v
    return out


def refractory_steps(t_ref_s, dt: float = DT_S):
    """Number of samples clamped after a spike: #{k >= 1 : k * dt < t_ref}.

    Equals ceil(t_ref / dt) - 1 off the dt grid; on it float rounding decides (DESIGN.md §2).
    """
    return np.ceil(np.asarray(t_ref_s, dtype=np.float64) / dt).astype(np.int64) - 1


def _check_inputs(theta, current, dt):
    if not (isinstance(dt, (float, int)) and math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a positive finite number of seconds, got {dt!r}")
    theta_np = theta.detach().cpu().numpy() if torch.is_tensor(theta) else np.asarray(theta, dtype=np.float64)
    check_theta(theta_np)
    shape = tuple(current.shape)
    if len(shape) != 2 or shape[0] != theta_np.shape[0] or shape[1] != N_SAMPLES:
        raise ValueError(
            f"current must have shape (N, {N_SAMPLES}) = ({theta_np.shape[0]}, {N_SAMPLES}) in A to match theta; got {shape}"
        )
    finite = torch.isfinite(current).all() if torch.is_tensor(current) else np.isfinite(current).all()
    if not bool(finite):
        raise ValueError("current must be finite (no NaN or inf)")
    return theta_np


def simulate(
    theta,
    current,
    dt: float = DT_S,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Batched LIF simulation, vectorised over traces, on the CPU or a CUDA device.

    theta: (N, 6) in SI units; current: (N, 501) in A; NumPy arrays or tensors.
    Returns V: (N, 501) in V as a tensor of `dtype` on `device` (default: current's device).

    Same arithmetic as `simulate_reference`, reorganised for speed: coefficients are
    computed once in float64, V_i = V_{i-1} * (1 - dt g_L / C_m) + (dt g_L / C_m) E_L
    + I_{i-1} dt / C_m, one fused multiply-add per step, in time-major layout; the
    refractory clamp is an integer countdown of `refractory_steps(t_ref)` samples.
    """
    theta_np = _check_inputs(theta, current, dt)
    if device is None:
        device = current.device if torch.is_tensor(current) else torch.device("cpu")
    device = torch.device(device)
    n = theta_np.shape[0]
    if chunk_size is None:
        # On the CPU, chunks keep each step's working set in cache; a GPU wants one big launch.
        chunk_size = 16384 if device.type == "cpu" else n
    theta64 = torch.as_tensor(theta_np, dtype=torch.float64, device=device)
    current_tm = torch.as_tensor(current, device=device).to(dtype).T.contiguous()  # (501, N) time-major
    out = torch.empty((N_SAMPLES, n), dtype=dtype, device=device)
    for lo in range(0, n, chunk_size):
        hi = min(lo + chunk_size, n)
        _integrate(theta64[lo:hi], current_tm[:, lo:hi], out[:, lo:hi], dt)
    return out.T


def _integrate(theta64: torch.Tensor, current_tm: torch.Tensor, out: torch.Tensor, dt: float) -> None:
    """Fill out (501, n) from theta (n, 6) float64 and time-major current (501, n)."""
    dtype = out.dtype
    c_m, g_l = theta64[:, INDEX["C_m"]], theta64[:, INDEX["g_L"]]
    alpha = dt * g_l / c_m  # (n,) leak fraction per step
    decay = (1.0 - alpha).to(dtype)
    rest = (alpha * theta64[:, INDEX["E_L"]]).to(dtype)
    gain = (dt / c_m).to(dtype)
    v_th = theta64[:, INDEX["V_th"]].to(dtype)
    v_res = theta64[:, INDEX["V_res"]].to(dtype)
    n_ref = torch.as_tensor(refractory_steps(theta64[:, INDEX["t_ref"]].cpu().numpy(), dt), device=out.device)
    n_ref = n_ref.to(torch.int32)

    # drive_i = (dt g_L / C_m) E_L + I_i dt / C_m for every step at once: (500, n).
    drive = torch.addcmul(rest, current_tm[:-1], gain)
    v = theta64[:, INDEX["E_L"]].to(dtype)
    out[0] = v
    countdown = torch.zeros_like(n_ref)  # samples of refractory clamp still due
    for i in range(1, out.shape[0]):
        refractory = countdown > 0
        v = torch.addcmul(drive[i - 1], v, decay)
        v = torch.where(refractory, v_res, v)
        spike = v >= v_th  # never true while refractory, since V_res < V_th
        v = torch.where(spike, v_res, v)
        countdown = torch.where(spike, n_ref, countdown - 1)
        out[i] = v


def simulate_batch(
    n: int,
    seed: int | np.random.Generator | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict[str, np.ndarray]:
    """Draw `n` (theta, stimulus) pairs from the prior and simulate them.

    Returns a dict of NumPy arrays, as BayesFlow's offline datasets and online simulators take:
    `parameters` (n, 6) float32 SI units, `observables` (n, 501, 1) float32 V,
    `current` (n, 501) float32 A, `amplitude` (n,) float32 A.
    The same seed gives bitwise the same arrays on the same device.
    """
    if isinstance(seed, np.random.Generator):
        seed = int(seed.integers(2**63 - 1))
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
    device = torch.device(device or "cpu")
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed) if seed is not None else int(torch.seed()))
    theta = sample_prior_torch(n, gen, device=device)
    current, amplitude, _ = sample_current(n, gen, device=device)
    v = simulate(theta, current, device=device, dtype=dtype)
    return {
        "parameters": theta.to(torch.float32).cpu().numpy(),
        "observables": v.contiguous().cpu().numpy()[:, :, None],
        "current": current.to(torch.float32).cpu().numpy(),
        "amplitude": amplitude.to(torch.float32).cpu().numpy(),
    }


__all__ = ["simulate_reference", "simulate", "simulate_batch", "refractory_steps", "sample_prior", "N_PARAMS"]
