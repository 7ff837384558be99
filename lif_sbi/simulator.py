"""The reference LIF simulator: a plain NumPy definition and a batched, vectorised torch one."""

from __future__ import annotations

import math
import warnings

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
    # The sum is finite iff every element is (|I| << float max), and costs no (N, 501) mask.
    total = current.sum() if torch.is_tensor(current) else np.sum(current)
    if not bool(np.isfinite(float(total))):
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
    compile: bool | None = None,
) -> torch.Tensor:
    """Batched LIF simulation, vectorised over traces, on the CPU or a CUDA device.

    theta: (N, 6) in SI units; current: (N, 501) in A; NumPy arrays or tensors.
    Returns V: (N, 501) in V as a tensor of `dtype` on `device` (default: current's device).

    Same arithmetic as `simulate_reference`, reorganised for speed: coefficients are
    computed once in float64, V_i = V_{i-1} * (1 - dt g_L / C_m) + (dt g_L / C_m) E_L
    + I_{i-1} dt / C_m, one fused multiply-add per step, in time-major layout; the
    refractory clamp is an integer countdown of `refractory_steps(t_ref)` samples.

    compile=True fuses blocks of `STEPS_PER_BLOCK` steps into one kernel with torch.compile
    (C++/OpenMP on the CPU, Triton on CUDA; the first call in a process compiles for 5-20 s
    and needs a C++ compiler on the CPU; if compilation fails the eager path is used with a
    warning). compile=None compiles from `COMPILE_MIN_TRACES` traces on, where the one-off
    cost pays for itself. Results agree with the eager path to rounding.
    """
    theta_np = _check_inputs(theta, current, dt)
    if device is None:
        device = current.device if torch.is_tensor(current) else torch.device("cpu")
    device = torch.device(device)
    n = theta_np.shape[0]
    if compile is None:
        compile = n >= COMPILE_MIN_TRACES
    if chunk_size is None:
        # On the CPU, chunks keep each step's working set in cache; a GPU wants one big launch.
        chunk_size = (65536 if compile else 16384) if device.type == "cpu" else n
    theta64 = torch.as_tensor(theta_np, dtype=torch.float64, device=device)
    current_tm = torch.as_tensor(current, device=device).to(dtype).T.contiguous()  # (501, N) time-major
    out = torch.empty((N_SAMPLES, n), dtype=dtype, device=device)
    for lo in range(0, n, chunk_size):
        hi = min(lo + chunk_size, n)
        _integrate(theta64[lo:hi], current_tm[:, lo:hi], out[:, lo:hi], dt, compile)
    return out.T


STEPS_PER_BLOCK = 20  # time steps fused into one compiled kernel call (500 = 25 blocks)


def _steps(v, countdown, current_block, rest, gain, decay, v_res, v_th, n_ref):
    """Advance `len(current_block)` Euler steps; returns (v, countdown, V of each step).

    v, countdown, rest, gain, decay, v_res, v_th, n_ref: (n,); current_block: (K, n) A,
    the input current of the K samples *before* the K new samples.
    """
    outs = []
    for k in range(current_block.shape[0]):
        refractory = countdown > 0
        # V_i = V_{i-1} (1 - dt g_L / C_m) + (dt g_L / C_m) E_L + I_{i-1} dt / C_m
        v = torch.addcmul(torch.addcmul(rest, current_block[k], gain), v, decay)
        v = torch.where(refractory, v_res, v)
        spike = v >= v_th  # never true while refractory, since V_res < V_th
        v = torch.where(spike, v_res, v)
        countdown = torch.where(spike, n_ref, countdown - 1)
        outs.append(v)
    return v, countdown, torch.stack(outs)


COMPILE_MIN_TRACES = 100_000
_compiled_steps = None


def _get_compiled_steps():
    """torch.compile of `_steps`: one fused kernel per block (C++/OpenMP on the CPU, Triton on CUDA)."""
    global _compiled_steps
    if _compiled_steps is None:
        compiled = torch.compile(_steps, dynamic=True)

        def first_call(*args):
            global _compiled_steps
            try:
                result = compiled(*args)
            except Exception as exc:  # no C++ compiler / Triton: stay correct, just slower
                warnings.warn(f"torch.compile of the LIF step failed ({type(exc).__name__}); using eager torch")
                _compiled_steps = _steps
                return _steps(*args)
            _compiled_steps = compiled
            return result

        _compiled_steps = first_call
    return _compiled_steps


def _integrate(theta64: torch.Tensor, current_tm: torch.Tensor, out: torch.Tensor, dt: float, compile: bool) -> None:
    """Fill out (501, n) from theta (n, 6) float64 and time-major current (501, n)."""
    dtype = out.dtype
    c_m, g_l = theta64[:, INDEX["C_m"]], theta64[:, INDEX["g_L"]]
    alpha = dt * g_l / c_m  # (n,) leak fraction per step
    decay = (1.0 - alpha).to(dtype)
    rest = (alpha * theta64[:, INDEX["E_L"]]).to(dtype)
    gain = (dt / c_m).to(dtype)
    # .contiguous(): in float64 .to(dtype) would return strided views of theta64, which cost
    # torch.compile a recompilation (guards on the view's base) and strided loads.
    v_th = theta64[:, INDEX["V_th"]].to(dtype).contiguous()
    v_res = theta64[:, INDEX["V_res"]].to(dtype).contiguous()
    n_ref = torch.as_tensor(refractory_steps(theta64[:, INDEX["t_ref"]].cpu().numpy(), dt), device=out.device)
    n_ref = n_ref.to(torch.int32)
    step_fn = _get_compiled_steps() if compile else _steps
    block = STEPS_PER_BLOCK if compile else 1

    v = theta64[:, INDEX["E_L"]].to(dtype).contiguous()
    out[0] = v
    countdown = torch.zeros_like(n_ref)  # samples of refractory clamp still due
    n_steps = out.shape[0]
    i = 1
    while i < n_steps:
        k = min(block, n_steps - i)
        fn = step_fn if k == block else _steps
        v, countdown, vs = fn(v, countdown, current_tm[i - 1 : i - 1 + k], rest, gain, decay, v_res, v_th, n_ref)
        out[i : i + k] = vs
        i += k


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
