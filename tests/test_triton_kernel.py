"""The fused Triton kernel (lif_sbi/triton_kernel.py) on the CPU under Triton's interpreter: bit for bit the Numba kernel, and the reference's spike trains."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Triton where torch's CUDA builds put it, else where `setup.sh test` puts it for this test alone
# (outside site-packages: a process that loads Triton's LLVM and TensorFlow's aborts).
TRITON_DIR = Path(__file__).resolve().parent.parent / ".venv" / "triton"
INSTALLED = importlib.util.find_spec("triton") is not None
pytestmark = pytest.mark.skipif(not INSTALLED and not (TRITON_DIR / "triton").is_dir(),
                                reason="triton not installed (bash setup.sh test puts it in .venv/triton)")

# Runs in a fresh process: TRITON_INTERPRET is read when triton is imported.
SCRIPT = r"""
import json, sys
import numpy as np, torch
from lif_sbi import simulator, triton_kernel
from lif_sbi.priors import INDEX, sample_prior
from lif_sbi.stimulus import sample_current
from lif_sbi.simulator import refractory_steps, simulate, simulate_reference

assert triton_kernel.INTERPRETED
n, steps, dt = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
theta = sample_prior(n, np.random.default_rng(7))
current = sample_current(n, torch.Generator().manual_seed(7), dtype=torch.float64)[0][:, :steps].contiguous()
current = current * (1.0 + 0.5 * torch.rand(n, 1, generator=torch.Generator().manual_seed(8), dtype=torch.float64))  # more spikes
out = {}
for name, dtype in (("float32", torch.float32), ("float64", torch.float64)):
    cur = current.to(dtype)
    v = simulate(theta, cur, dt, kernel="triton", dtype=dtype)
    v_numba = simulate(theta, cur, dt, kernel="numba", dtype=dtype)
    into = torch.full((n, steps), float("nan"), dtype=dtype)
    same_out = simulate(theta, cur, dt, kernel="triton", dtype=dtype, out=into) is into and torch.equal(into, v)
    out[name] = {"bitwise_numba": bool(torch.equal(v, v_numba)), "out": bool(same_out), "shape": list(v.shape)}
ref = simulate_reference(theta, current.numpy(), dt)
v64 = simulate(theta, current, dt, kernel="triton", dtype=torch.float64).numpy()
spikes = int((ref == theta[:, INDEX["V_res"], None]).sum())
out["float64_max_dv"] = float(np.abs(v64 - ref).max())
out["spike_trains_equal"] = bool(np.array_equal(v64 == theta[:, INDEX["V_res"], None], ref == theta[:, INDEX["V_res"], None]))
out["spikes"] = spikes
print(json.dumps(out))
"""


def _interpreted(n: int, steps: int, dt: float) -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    if not INSTALLED:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TRITON_DIR), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(n), str(steps), repr(dt)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("n, steps, dt", [(300, 501, 1e-4), (130, 201, 2e-4)], ids=["reference-grid", "ragged-block-other-step"])
def test_triton_kernel_is_the_numba_kernel_bit_for_bit(n, steps, dt):
    """Both dtypes, a batch that is not a whole number of blocks (130 = 128 + 2) and another grid:
    the same bits as the Numba kernel, written into `out` where given; in float64 the reference's
    spike trains exactly and its voltages to 1e-9 V."""
    got = _interpreted(n, steps, dt)
    for name in ("float32", "float64"):
        assert got[name] == {"bitwise_numba": True, "out": True, "shape": [n, steps]}, got
    assert got["spikes"] > n and got["spike_trains_equal"], got
    assert got["float64_max_dv"] <= 1e-9, got
