"""A fused Triton LIF kernel for CUDA: the whole time loop in one launch, each trace's state in registers."""

from __future__ import annotations

import os

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: `simulator` uses Numba there, torch.compile on CUDA
    triton = tl = None

AVAILABLE = triton is not None
#: Triton's interpreter (TRITON_INTERPRET=1, read when triton is imported) runs the kernel on the
#: CPU with NumPy: how the tests check it on machines without a GPU.
INTERPRETED = AVAILABLE and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
BLOCK = 128  # traces per program: one per thread of 4 warps
NUM_WARPS = 4

if AVAILABLE:
    # Written by hand: neither torch nor Triton's library has a sequential scan with reset.
    # torch.compile runs the time loop as one kernel launch per block of steps, reloading the state
    # each time; here one program owns BLOCK traces for all T samples, reads each current sample
    # once and writes each voltage sample once, in the (N, T) layout (the stride-T accesses of one
    # warp fill whole cache sectors over consecutive steps). Same arithmetic and order as
    # `cpu_kernel.integrate`, launched without FMA contraction: bit for bit the Numba kernel's numbers.

    @triton.jit
    def _lif(decay_ptr, rest_ptr, gain_ptr, v0_ptr, vth_ptr, vres_ptr, nref_ptr, cur_ptr, out_ptr, n, steps,
             BLOCK_N: tl.constexpr):  # pragma: no cover - compiled (or interpreted)
        k = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        live = k < n
        d = tl.load(decay_ptr + k, mask=live, other=0.0)
        r = tl.load(rest_ptr + k, mask=live, other=0.0)
        g = tl.load(gain_ptr + k, mask=live, other=0.0)
        th = tl.load(vth_ptr + k, mask=live, other=0.0)
        vr = tl.load(vres_ptr + k, mask=live, other=0.0)
        m = tl.load(nref_ptr + k, mask=live, other=0)
        v = tl.load(v0_ptr + k, mask=live, other=0.0)
        row = k.to(tl.int64) * steps
        tl.store(out_ptr + row, v, mask=live)
        countdown = tl.zeros((BLOCK_N,), dtype=tl.int32)
        for i in range(1, steps):
            refractory = countdown > 0
            v_new = (r + tl.load(cur_ptr + row + (i - 1), mask=live, other=0.0) * g) + v * d
            spike = (v_new >= th) & (countdown <= 0)
            v = tl.where(refractory | spike, vr, v_new)
            countdown = tl.where(refractory, countdown - 1, tl.where(spike, m, countdown))
            tl.store(out_ptr + row + i, v, mask=live)


def integrate(decay, rest, gain, v0, v_th, v_res, n_ref, current, out) -> None:
    """`cpu_kernel.integrate`'s contract on torch tensors of one device: decay, rest, gain, v0,
    v_th, v_res: (n,) in the output's dtype; n_ref: (n,) int32; current: (n, T) A contiguous in the
    output's dtype; out: (n, T) V contiguous, filled in place."""
    if not AVAILABLE:
        raise RuntimeError("the Triton kernel needs the triton package (it comes with PyTorch's CUDA builds)")
    n, steps = current.shape
    if n == 0:
        return
    _lif[(triton.cdiv(n, BLOCK),)](decay, rest, gain, v0, v_th, v_res, n_ref, current, out, n, steps, BLOCK_N=BLOCK,
                                    num_warps=NUM_WARPS, enable_fp_fusion=False)
