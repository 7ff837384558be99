"""Benchmarks: simulated traces per second, from the reference loop to torch.compile and CUDA.

    .venv/bin/python -m pytest bench/bench_simulator.py --benchmark-json=results/bench_simulator.json -q
    .venv/bin/python bench/report.py results/bench_simulator.json

What each implementation is (all float32 except the reference, all on the same inputs):

- ``reference``: `simulate_reference`, the NumPy per-trace loop of the original study (float64).
- ``naive_eager``: a straightforward per-step torch loop over time, written below, with the
  (N, 501) layout of the inputs and outputs: the "before" figure.
- ``eager``: `simulate(..., compile=False)`: time-major layout, coefficients precomputed, one
  fused multiply-add per step, integer refractory countdown, chunks of traces.
- ``compiled``: `simulate(..., compile=True)`: blocks of 20 steps fused by torch.compile
  (warm-up call at the same N excluded from the timing).
- ``cuda`` / ``cuda_compiled`` / ``cuda_triton``: `simulate` on the GPU with the eager,
  torch.compile and fused Triton kernels (skipped without one).
- ``floor_write`` / ``floor_copy``: the memory floor of the same bytes: filling an (N, 501)
  float32 tensor (`fill_`, the output alone) and copying one into another (`copy_`, what a kernel
  that reads the current and writes the voltage moves); on the CPU and on CUDA.

- ``stimulus`` / ``cuda_stimulus``: drawing the N coloured stimuli the simulator integrates
  (`sample_current`: white noise and the FFT convolution, in float64, cast to float32), on the
  CPU (``stimulus_one_block``: without `stimulus.CPU_ROWS`'s row blocks) and on CUDA. Its time
  next to the simulator's in the same run says whether fusing the two could pay.

`benchmark.extra_info` holds n (traces per call) so bench/report.py can compute traces/s.
LIF_SBI_BENCH_MAX_N caps N (e.g. 10000 for a quick run).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from lif_sbi import stimulus
from lif_sbi.priors import INDEX, sample_prior
from lif_sbi.simulator import simulate, simulate_reference
from lif_sbi.stimulus import DT_S, N_SAMPLES, sample_current

MAX_N = int(float(os.environ.get("LIF_SBI_BENCH_MAX_N", "1e6")))
CPU_NS = [n for n in (1_000, 10_000, 100_000) if n <= MAX_N]
CUDA_NS = [n for n in (1_000, 10_000, 100_000, 1_000_000) if n <= MAX_N]
REFERENCE_N = 200
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")

_inputs: list[tuple[np.ndarray, torch.Tensor]] = []


def inputs(n: int) -> tuple[np.ndarray, torch.Tensor]:
    """theta (n, 6) float64 from the prior, current (n, 501) float32 A from the stimulus.

    Drawn once (fixed seed) for the largest N of the run; every implementation and N sees
    prefixes of the same traces.
    """
    if not _inputs:
        big = max([REFERENCE_N, *CPU_NS, *(CUDA_NS if HAS_CUDA else [])])
        theta = sample_prior(big, 2024)
        current, _, _ = sample_current(big, torch.Generator().manual_seed(2024), dtype=torch.float32)
        _inputs.append((theta, current))
    theta, current = _inputs[0]
    return theta[:n], current[:n]


def rounds_for(n: int) -> int:
    return max(2, min(15, int(2e5 // n)))


def info(benchmark, impl: str, n: int, device: str = "cpu", dtype: str = "float32") -> None:
    benchmark.extra_info.update(
        impl=impl, n=n, device=device, dtype=dtype, torch=torch.__version__, threads=torch.get_num_threads(),
        gpu=torch.cuda.get_device_name() if device == "cuda" else None,
    )


# --------------------------------------------------------------------------------------------
# the "before" figure: the obvious torch port of the reference loop


def simulate_naive(theta: np.ndarray, current: torch.Tensor, dt: float = DT_S) -> torch.Tensor:
    """Per-step eager torch loop in (N, 501) layout, as one writes it first: no precomputed
    coefficients, the refractory rule as a time comparison, column writes into the output."""
    dtype, device = current.dtype, current.device
    th = torch.as_tensor(theta, dtype=dtype, device=device)
    c_m, g_l, e_l, v_th, v_res, t_ref = (th[:, INDEX[k]] for k in ("C_m", "g_L", "E_L", "V_th", "V_res", "t_ref"))
    n, n_steps = current.shape
    v = torch.empty((n, n_steps), dtype=dtype, device=device)
    v[:, 0] = e_l
    t_last = torch.full((n,), -float("inf"), dtype=dtype, device=device)
    for i in range(1, n_steps):
        t = i * dt
        refractory = (t - t_last) < t_ref
        v_new = v[:, i - 1] + (-(v[:, i - 1] - e_l) + current[:, i - 1] / g_l) * dt * g_l / c_m
        v_new = torch.where(refractory, v_res, v_new)
        spike = v_new >= v_th
        v[:, i] = torch.where(spike, v_res, v_new)
        t_last = torch.where(spike, torch.full_like(t_last, t), t_last)
    return v


def test_naive_matches_reference():
    """Sanity: the naive variant simulates the same model (float64, t_ref off the dt grid)."""
    theta, current = inputs(200)
    ref = simulate_reference(theta, current.double().numpy())
    got = simulate_naive(theta, current.double()).numpy()
    np.testing.assert_array_equal(got, ref)  # same float64 operations in the same order
    assert int(np.sum(ref == theta[:, INDEX["V_res"], None])) > 0  # and it spikes


# --------------------------------------------------------------------------------------------
# benchmarks


def test_reference(benchmark):
    theta, current = inputs(REFERENCE_N)
    current = current.double().numpy()
    info(benchmark, "reference", REFERENCE_N, dtype="float64")
    out = benchmark.pedantic(simulate_reference, args=(theta, current), rounds=3, iterations=1, warmup_rounds=1)
    assert out.shape == (REFERENCE_N, N_SAMPLES)


@pytest.mark.parametrize("n", CPU_NS)
def test_naive_eager(benchmark, n):
    theta, current = inputs(n)
    info(benchmark, "naive_eager", n)
    out = benchmark.pedantic(simulate_naive, args=(theta, current), rounds=rounds_for(n), iterations=1, warmup_rounds=1)
    assert out.shape == (n, N_SAMPLES)


@pytest.mark.parametrize("n", CPU_NS)
def test_eager(benchmark, n):
    theta, current = inputs(n)
    info(benchmark, "eager", n)
    run = lambda: simulate(theta, current, compile=False)  # noqa: E731
    out = benchmark.pedantic(run, rounds=rounds_for(n), iterations=1, warmup_rounds=1)
    assert out.shape == (n, N_SAMPLES)


@pytest.mark.parametrize("n", CPU_NS)
def test_numba(benchmark, n):
    theta, current = inputs(n)
    info(benchmark, "numba", n)
    simulate(theta[:10], current[:10], kernel="numba")  # JIT (or load the on-disk cache)
    out = torch.empty((n, 501))
    benchmark.pedantic(lambda: simulate(theta, current, kernel="numba", out=out), rounds=rounds_for(n), warmup_rounds=1)


@pytest.mark.parametrize("n", CPU_NS)
def test_numba_alloc(benchmark, n):
    """The same, allocating the (N, 501) output each call (first-touch page faults included)."""
    theta, current = inputs(n)
    info(benchmark, "numba_alloc", n)
    simulate(theta[:10], current[:10], kernel="numba")
    benchmark.pedantic(lambda: simulate(theta, current, kernel="numba"), rounds=rounds_for(n), warmup_rounds=1)


@pytest.mark.parametrize("n", CPU_NS)
def test_compiled(benchmark, n):
    theta, current = inputs(n)
    info(benchmark, "compiled", n)
    run = lambda: simulate(theta, current, compile=True)  # noqa: E731
    run()  # compile (first call in the process) and any recompilation for this N's chunking
    out = benchmark.pedantic(run, rounds=rounds_for(n), iterations=1, warmup_rounds=1)
    assert out.shape == (n, N_SAMPLES)


@pytest.mark.parametrize("what", ["write", "copy"])
@pytest.mark.parametrize("n", CPU_NS)
def test_floor(benchmark, n, what):
    """The CPU's memory floor for N traces: the simulator cannot beat moving its own bytes."""
    info(benchmark, f"floor_{what}", n)
    out, src = torch.empty((n, N_SAMPLES)), inputs(n)[1].contiguous()
    run = (lambda: out.fill_(1.0)) if what == "write" else (lambda: out.copy_(src))  # noqa: E731
    benchmark.pedantic(run, rounds=rounds_for(n), warmup_rounds=1)


@pytest.mark.parametrize("blocks", ["rows", "one"])
@pytest.mark.parametrize("n", CPU_NS)
def test_stimulus(benchmark, n, blocks, monkeypatch):
    """N coloured stimuli on the CPU, float32 out, as training draws them: in blocks of
    `stimulus.CPU_ROWS` rows (the default) or in one block of all N (the same numbers)."""
    info(benchmark, "stimulus" if blocks == "rows" else "stimulus_one_block", n)
    if blocks == "one":
        monkeypatch.setattr(stimulus, "CPU_ROWS", n)
    gen = torch.Generator().manual_seed(7)
    run = lambda: sample_current(n, gen, dtype=torch.float32)[0]  # noqa: E731
    out = benchmark.pedantic(run, rounds=rounds_for(n), warmup_rounds=1)
    assert out.shape == (n, N_SAMPLES)


CUDA_KERNELS = {"cuda": "eager", "cuda_compiled": "compiled", "cuda_triton": "triton"}


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("impl", list(CUDA_KERNELS))
@pytest.mark.parametrize("n", CUDA_NS)
def test_cuda(benchmark, n, impl):
    theta, current = inputs(n)
    current = current.cuda()  # inputs already on the device: the figure is the simulation
    out = torch.empty((n, N_SAMPLES), device="cuda")
    info(benchmark, impl, n, device="cuda")

    def run():
        v = simulate(theta, current, kernel=CUDA_KERNELS[impl], out=out)
        torch.cuda.synchronize()
        return v

    run()
    v = benchmark.pedantic(run, rounds=max(3, rounds_for(n)), iterations=1, warmup_rounds=1)
    assert v.shape == (n, N_SAMPLES)


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("what", ["write", "copy"])
@pytest.mark.parametrize("n", CUDA_NS)
def test_cuda_floor(benchmark, n, what):
    """The GPU's memory floor for N traces (see test_floor)."""
    info(benchmark, f"cuda_floor_{what}", n, device="cuda")
    out, src = torch.empty((n, N_SAMPLES), device="cuda"), inputs(n)[1].cuda()

    def run():
        out.fill_(1.0) if what == "write" else out.copy_(src)
        torch.cuda.synchronize()

    benchmark.pedantic(run, rounds=max(3, rounds_for(n)), warmup_rounds=1)


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("n", CUDA_NS)
def test_cuda_stimulus(benchmark, n):
    """N coloured stimuli drawn on the GPU (see test_stimulus)."""
    info(benchmark, "cuda_stimulus", n, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(7)

    def run():
        current = sample_current(n, gen, device="cuda", dtype=torch.float32)[0]
        torch.cuda.synchronize()
        return current

    out = benchmark.pedantic(run, rounds=max(3, rounds_for(n)), warmup_rounds=1)
    assert out.shape == (n, N_SAMPLES)
