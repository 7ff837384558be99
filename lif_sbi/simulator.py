"""The reference LIF simulator: a plain NumPy definition and a batched, vectorised torch one."""

from __future__ import annotations

import importlib.util
import math
import os
import warnings

import numpy as np
import torch

from .config import DATA_DEVICES, ConfigError
from .priors import INDEX, N_PARAMS, check_theta, sample_prior, sample_prior_torch
from . import cpu_kernel
from .stimulus import DT_S, sample_current, sample_stimulus


def simulate_reference(theta, current, dt: float = DT_S) -> np.ndarray:
    """Forward-Euler LIF with reset and refractory clamp, one trace at a time (DESIGN.md §2).

    theta: (6,) or (N, 6) in SI units; current: (T,) or (N, T) in A on the grid t_i = i dt.
    Returns V: (T,) or (N, T) in V, float64. This is the definition the fast path is
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
    if len(shape) != 2 or shape[0] != theta_np.shape[0] or shape[1] < 2:
        raise ValueError(
            f"current must have shape (N, samples) = ({theta_np.shape[0]}, samples >= 2) in A to match theta; got {shape}"
        )
    # The sum is finite iff every element is (|I| << float max), and costs no (N, 501) mask.
    total = current.sum() if torch.is_tensor(current) else np.sum(current)
    if not bool(np.isfinite(float(total))):
        raise ValueError("current must be finite (no NaN or inf)")
    return theta_np


KERNELS = ("auto", "numba", "triton", "compiled", "eager")


def simulate(
    theta,
    current,
    dt: float = DT_S,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    chunk_size: int | None = None,
    compile: bool | None = None,
    kernel: str = "auto",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Batched LIF simulation, vectorised over traces, on the CPU or a CUDA device.

    theta: (N, 6) in SI units; current: (N, T) in A on the grid t_i = i dt (T = 501 for the
    reference's 50 ms at 0.1 ms); NumPy arrays or tensors.
    Returns V: (N, T) in V as a tensor of `dtype` on `device` (default: current's device).
    out: optional (N, T) tensor of `dtype` on `device` to write into (saves the allocation).

    Same arithmetic as `simulate_reference`, reorganised for speed: coefficients are
    computed once in float64, V_i = V_{i-1} * (1 - dt g_L / C_m) + (dt g_L / C_m) E_L
    + I_{i-1} dt / C_m, and the refractory clamp is an integer countdown of
    `refractory_steps(t_ref)` samples. Kernels (results agree to rounding):

    - "numba" (CPU): a compiled per-trace loop over both cores, in the (N, 501) layout;
    - "triton" (CUDA): the same loop as one fused Triton kernel, one thread per trace, bit for bit
      the Numba kernel's numbers (`triton_kernel`; on the CPU only under Triton's interpreter,
      TRITON_INTERPRET=1, which the tests use);
    - "compiled": blocks of `STEPS_PER_BLOCK` vectorised steps fused by torch.compile, in
      time-major layout (Triton on CUDA, C++ on the CPU; the first call in a process compiles
      for 5-20 s; if compilation fails the eager path is used with a warning);
    - "eager": the same vectorised steps op by op in eager torch;
    - "auto": numba on the CPU (eager if Numba is missing); on CUDA triton, or where Triton is
      missing or fails to compile (a warning says so) "compiled" from `COMPILE_MIN_TRACES` traces
      on, eager below.
    compile=True / False is shorthand for kernel="compiled" / "eager".
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}; got {kernel!r}")
    if compile is not None:
        kernel = "compiled" if compile else "eager"
    theta_np = _check_inputs(theta, current, dt)
    if device is None:
        device = current.device if torch.is_tensor(current) else torch.device("cpu")
    device = torch.device(device)
    n, n_samples = theta_np.shape[0], current.shape[1]
    auto = kernel == "auto"
    kernel = _pick_kernel(kernel, device, n)
    if out is not None and (tuple(out.shape) != (n, n_samples) or out.dtype != dtype or out.device != device or not out.is_contiguous()):
        raise ValueError(f"out must be a contiguous ({n}, {n_samples}) {dtype} tensor on {device}; got {tuple(out.shape)} {out.dtype} on {out.device}")
    if kernel == "triton":
        try:
            return _simulate_triton(theta_np, current, dt, device, dtype, out)
        except Exception as exc:  # noqa: BLE001 - a Triton that cannot compile here: stay correct with torch.compile
            if not auto:
                raise
            _triton_failed(exc)
            kernel = "compiled" if n >= COMPILE_MIN_TRACES else "eager"
    if kernel == "numba":
        if out is None:
            out = torch.empty((n, n_samples), dtype=dtype, device=device)
        coeffs = _coefficients_np(theta_np.astype(np.float64), dt, out.numpy().dtype)
        cur = torch.as_tensor(current).to(device=device, dtype=dtype).contiguous()
        cpu_kernel.integrate(*coeffs, cur.numpy(), out.numpy())
        return out
    theta64 = torch.as_tensor(theta_np, dtype=torch.float64, device=device)
    if chunk_size is None:
        # On the CPU, chunks keep each step's working set in cache; a GPU wants one big launch.
        chunk_size = (65536 if kernel == "compiled" else 16384) if device.type == "cpu" else n
    current_tm = torch.as_tensor(current, device=device).to(dtype).T.contiguous()  # (T, N) time-major
    out_tm = torch.empty((n_samples, n), dtype=dtype, device=device)
    for lo in range(0, n, chunk_size):
        hi = min(lo + chunk_size, n)
        _integrate(theta64[lo:hi], current_tm[:, lo:hi], out_tm[:, lo:hi], dt, kernel == "compiled")
    if out is None:
        return out_tm.T  # a transposed view: no copy
    out.copy_(out_tm.T)
    return out


TRITON_INSTALLED = importlib.util.find_spec("triton") is not None  # lif_sbi.triton_kernel imports it (0.4 s) where used
_TRITON_BROKEN: list[str] = []  # why the Triton kernel failed in this process, once it has


def _triton_usable() -> bool:
    return TRITON_INSTALLED and not _TRITON_BROKEN


def _triton_failed(exc: Exception) -> None:
    _TRITON_BROKEN.append(f"{type(exc).__name__}: {exc}")
    warnings.warn(f"the Triton LIF kernel failed ({type(exc).__name__}); simulating with torch.compile instead")


def _pick_kernel(kernel: str, device: torch.device, n: int) -> str:
    """The kernel `simulate` runs for `kernel` on `device` with n traces ("auto" resolved), or
    ValueError where the one asked for cannot run there."""
    if kernel == "auto":
        if device.type == "cpu":
            return "numba" if cpu_kernel.AVAILABLE else "eager"
        return "triton" if _triton_usable() else "compiled" if n >= COMPILE_MIN_TRACES else "eager"
    if kernel == "numba" and (device.type != "cpu" or not cpu_kernel.AVAILABLE):
        raise ValueError("kernel='numba' needs device='cpu' and the numba package")
    if kernel == "triton" and not (TRITON_INSTALLED and (device.type == "cuda" or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"))):
        raise ValueError("kernel='triton' needs a CUDA device and the triton package (on the CPU: TRITON_INTERPRET=1, for tests)")
    return kernel


def _simulate_triton(theta_np: np.ndarray, current, dt: float, device: torch.device, dtype: torch.dtype, out) -> torch.Tensor:
    """`simulate` with `triton_kernel`: coefficients in float64 on the CPU, as the Numba path."""
    from . import triton_kernel

    n, n_samples = theta_np.shape[0], current.shape[1]
    if out is None:
        out = torch.empty((n, n_samples), dtype=dtype, device=device)
    coeffs = _coefficients(torch.as_tensor(theta_np, dtype=torch.float64, device=device), dt, dtype)
    cur = torch.as_tensor(current).to(device=device, dtype=dtype).contiguous()
    triton_kernel.integrate(*coeffs, cur, out)
    return out


def _coefficients_np(theta64: np.ndarray, dt: float, dtype: np.dtype):
    """Per-trace constants from theta (n, 6) float64, each (n,) contiguous NumPy:
    decay = 1 - dt g_L / C_m, rest = (dt g_L / C_m) E_L, gain = dt / C_m, V_0 = E_L, V_th, V_res
    in `dtype`, and n_ref (int32) refractory samples."""
    c_m, g_l, e_l = theta64[:, INDEX["C_m"]], theta64[:, INDEX["g_L"]], theta64[:, INDEX["E_L"]]
    alpha = dt * g_l / c_m  # (n,) leak fraction per step
    cast = lambda x: np.ascontiguousarray(x, dtype=dtype)  # noqa: E731
    return (cast(1.0 - alpha), cast(alpha * e_l), cast(dt / c_m), cast(e_l), cast(theta64[:, INDEX["V_th"]]),
            cast(theta64[:, INDEX["V_res"]]), np.ascontiguousarray(refractory_steps(theta64[:, INDEX["t_ref"]], dt), dtype=np.int32))


def _coefficients(theta64: torch.Tensor, dt: float, dtype: torch.dtype):
    """`_coefficients_np` as tensors of `dtype` on theta64's device (float64 arithmetic is
    correctly rounded in NumPy and torch alike: the same numbers)."""
    np_dtype = torch.empty((), dtype=dtype).numpy().dtype
    return tuple(torch.as_tensor(c, device=theta64.device)
                 for c in _coefficients_np(theta64.detach().cpu().numpy(), dt, np_dtype))


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
    """Fill out (T, n) from theta (n, 6) float64 and time-major current (T, n)."""
    # Contiguous constants: in float64 .to(dtype) would return strided views of theta64, which
    # cost torch.compile a recompilation (guards on the view's base) and strided loads.
    decay, rest, gain, v, v_th, v_res, n_ref = _coefficients(theta64, dt, out.dtype)
    step_fn = _get_compiled_steps() if compile else _steps
    block = STEPS_PER_BLOCK if compile else 1
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


def resolve_device(name: str) -> str:
    """`data.device` -> the torch device type the traces are simulated on ("cpu" or "cuda")."""
    has_cuda = torch.cuda.is_available()
    if name == "auto":
        return "cuda" if has_cuda else "cpu"
    if name == "cuda" and not has_cuda:
        raise ConfigError("data.device = 'cuda' is not allowed on this machine: torch sees no CUDA device (use 'auto' or 'cpu')")
    if name not in DATA_DEVICES:
        raise ConfigError(f"data.device = {name!r} is not allowed: expected one of {', '.join(DATA_DEVICES)}")
    return name


def device_label(device: str) -> str:
    """What simulates on `device` ("cpu" or "cuda"), for people: "CPU (Numba)", "CUDA (NVIDIA H200)"."""
    if device == "cuda":
        return f"CUDA ({torch.cuda.get_device_name()})"
    return "CPU (Numba)" if cpu_kernel.AVAILABLE else "CPU (torch)"


def simulate_batch(
    n: int,
    seed: int | np.random.Generator | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    stimulus=None,
    prior: str = "reference",
) -> dict[str, np.ndarray]:
    """Draw `n` (theta, stimulus) pairs from the prior and simulate them on `device`.

    stimulus: a `lif_sbi.config.StimulusConfig` (protocols, window, step); None is the reference
    study's coloured current on 50 ms at 0.1 ms, drawn as `stimulus.sample_current` draws it.
    prior: a `priors.PRIOR_KINDS` name. Returns a dict of NumPy arrays, as BayesFlow's offline
    datasets and online simulators take: `parameters` (n, 6) float32 SI units, `observables`
    (n, T, 1) float32 V, `current` (n, T) float32 A, `amplitude` (n,) float32 A.
    The draws always come from a CPU generator, so the same seed gives bitwise the same
    parameters and stimuli on every device; the traces are bitwise the same on the same device
    and agree across devices within the float32 tolerances of the CPU-vs-CUDA parity tests.
    """
    if isinstance(seed, np.random.Generator):
        seed = int(seed.integers(2**63 - 1))
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
    device = torch.device(device or "cpu")
    gen = torch.Generator()  # on the CPU whatever `device` is: draws independent of the machine
    gen.manual_seed(int(seed) if seed is not None else int(torch.seed()))
    theta = sample_prior_torch(n, gen, kind=prior)
    if stimulus is None:
        current, amplitude, _ = sample_current(n, gen)
        dt = DT_S
    else:
        current, amplitude = sample_stimulus(n, gen, stimulus)
        dt = stimulus.dt_s
    v = simulate(theta, current, dt, device=device, dtype=dtype)
    return {
        "parameters": theta.to(torch.float32).cpu().numpy(),
        "observables": v.contiguous().cpu().numpy()[:, :, None],
        "current": current.to(torch.float32).cpu().numpy(),
        "amplitude": amplitude.to(torch.float32).cpu().numpy(),
    }


__all__ = ["simulate_reference", "simulate", "simulate_batch", "resolve_device", "device_label", "refractory_steps", "sample_prior", "N_PARAMS"]
