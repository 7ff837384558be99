"""Level 3, the simulator on the CPU and on CUDA: the same spike trains and voltages (torch only, no Keras)."""

from __future__ import annotations

import numpy as np

from .checks import Check, _le
from .thresholds import L1_SEED, Thresholds


def level3(th: Thresholds) -> list[Check]:
    import torch

    if not torch.cuda.is_available():
        return [Check(3, "simulator CPU vs CUDA", "skipped: no CUDA device", None, None, "", True)]
    from ..priors import sample_prior
    from ..simulator import simulate
    from ..stimulus import sample_current

    n = 4000
    theta = sample_prior(n, np.random.default_rng(L1_SEED))
    current, _, _ = sample_current(n, torch.Generator().manual_seed(L1_SEED))
    checks = []
    dev = torch.cuda.get_device_name(0)
    for dtype in (torch.float64, torch.float32):
        cpu = simulate(theta, current, dtype=dtype).double().numpy()
        gpu = simulate(theta, current.cuda(), dtype=dtype).double().cpu().numpy()
        spikes_cpu = _spike_trains(cpu, theta, dtype)
        spikes_gpu = _spike_trains(gpu, theta, dtype)
        same_train = np.array([np.array_equal(a, b) for a, b in zip(spikes_cpu, spikes_gpu)])
        same_count = np.array([len(a) == len(b) for a, b in zip(spikes_cpu, spikes_gpu)])
        name = str(dtype).replace("torch.", "")
        if dtype == torch.float64:
            frac = float(same_train.mean())
            checks.append(Check(3, f"simulator CPU vs CUDA ({dev})", f"{name}: share of identical spike trains",
                                frac, 1.0, "==", frac == 1.0, f"{n} traces"))
        else:
            frac = float(same_count.mean())
            checks.append(Check(3, f"simulator CPU vs CUDA ({dev})", f"{name}: share of equal spike counts",
                                frac, th.sim_f32_same_count, "≥", frac >= th.sim_f32_same_count, f"{n} traces"))
            dv = float(np.max(np.abs(cpu - gpu)[same_train])) if same_train.any() else float("nan")
            checks.append(_le(3, f"simulator CPU vs CUDA ({dev})", f"{name}: max |ΔV| [V] where spike trains agree",
                              dv, th.sim_f32_max_dv))
    return checks


def _spike_trains(v: np.ndarray, theta: np.ndarray, dtype) -> list[np.ndarray]:
    """Spike sample indices per trace: each run of V == V_res of length L starting at s holds the
    spikes s, s + (n_ref + 1), ... (a spike right after a refractory clamp merges two runs)."""
    import torch

    from ..priors import INDEX
    from ..simulator import refractory_steps

    v_res = theta[:, INDEX["V_res"]].astype(np.float32 if dtype == torch.float32 else np.float64).astype(np.float64)
    n_ref = refractory_steps(theta[:, INDEX["t_ref"]])
    out = []
    for row, r, k in zip(v, v_res, n_ref):
        at = np.concatenate(([False], row == r, [False]))
        edges = np.flatnonzero(np.diff(at.astype(np.int8)))
        out.append(np.concatenate([np.arange(s, e, k + 1) for s, e in zip(edges[::2], edges[1::2])] or [np.empty(0, np.int64)]))
    return out
