"""A compiled per-trace LIF loop for the CPU (Numba), reading and writing the (N, 501) layout in place."""

from __future__ import annotations

try:
    import numba
except ImportError:  # the torch paths in `simulator` still work
    numba = None

AVAILABLE = numba is not None

if AVAILABLE:
    # Written by hand: neither torch nor NumPy has a sequential scan with reset. One trace per
    # iteration keeps V and the refractory countdown in registers, reads the current row and
    # writes the voltage row contiguously (no time-major transposes), and spreads traces over
    # the cores. Same arithmetic and order as `simulator._steps` (no fastmath re-association).

    @numba.njit(parallel=True, cache=True, nogil=True)
    def integrate(decay, rest, gain, v0, v_th, v_res, n_ref, current, out):  # pragma: no cover - compiled
        """decay, rest, gain, v0, v_th, v_res: (n,) in the output's dtype; n_ref: (n,) int32;
        current: (n, T) A; out: (n, T) V, filled in place."""
        n, steps = current.shape
        for k in numba.prange(n):
            v = v0[k]
            out[k, 0] = v
            countdown = 0
            d, r, g, th, vr, m = decay[k], rest[k], gain[k], v_th[k], v_res[k], n_ref[k]
            for i in range(1, steps):
                if countdown > 0:
                    v = vr
                    countdown -= 1
                else:
                    v = (r + current[k, i - 1] * g) + v * d
                    if v >= th:
                        v = vr
                        countdown = m
                out[k, i] = v
else:
    integrate = None
