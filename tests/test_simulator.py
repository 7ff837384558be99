"""The batched simulator against the literal reference loop, hand-made cases and a closed form."""

from __future__ import annotations

import functools
import math
import os
import warnings

import numpy as np
import pytest
import torch

from conftest import spike_times
from lif_sbi import simulator
from lif_sbi.config import ConfigError, StimulusConfig
from lif_sbi.priors import INDEX, sample_prior, sample_prior_torch
from lif_sbi.simulator import refractory_steps, simulate, simulate_batch, simulate_reference
from lif_sbi.stimulus import DT_S, N_SAMPLES, sample_current, sample_stimulus

C, G, E, TH, R, TR = (INDEX[k] for k in ("C_m", "g_L", "E_L", "V_th", "V_res", "t_ref"))
FLOAT32_AGREE = 0.995  # fraction of traces whose float32 spike train must equal float64's
FLOAT32_DV = 1e-5  # V, on those traces
FLOAT64_DV = 1e-9  # V


def compare(theta, v_ref, v, dtype, ref_dtype=np.float64):
    """Compare a simulated batch with a reference batch (default: the float64 reference);
    returns (same spike count, same spike train, max |dV| per trace).

    v_ref: (N, 501) NumPy, computed in `ref_dtype` (spikes are where it equals V_res in that
    dtype); v: (N, 501) torch tensor of `dtype` on any device.
    """
    n_ref = refractory_steps(theta[:, TR])
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    assert v.dtype == dtype and tuple(v.shape) == v_ref.shape
    v = v.cpu().numpy()
    ref_spikes = spike_times(v_ref, theta[:, R].astype(ref_dtype), n_ref)
    got_spikes = spike_times(v, theta[:, R].astype(np_dtype), n_ref)
    same_count = np.array([len(a) == len(b) for a, b in zip(ref_spikes, got_spikes)])
    same_train = np.array([np.array_equal(a, b) for a, b in zip(ref_spikes, got_spikes)])
    dv = np.abs(v.astype(np.float64) - v_ref).max(axis=1)
    return same_count, same_train, dv


def check_against_reference(cases, dtype, **kw):
    theta, current, v_ref = cases["theta"], cases["current"], cases["v_ref"]
    assert sum(len(s) for s in spike_times(v_ref, theta[:, R], refractory_steps(theta[:, TR]))) > 10 * len(theta)
    cur = torch.from_numpy(current).to(dtype)  # float32 runs see the float32 current, as in simulate_batch
    v = simulate(theta, cur, dtype=dtype, **kw)
    same_count, same_train, dv = compare(theta, v_ref, v, dtype)
    if dtype == torch.float64:
        bad = np.flatnonzero(~same_train)
        assert bad.size == 0, f"{bad.size} traces with different spike times, e.g. #{bad[:5]}"
        assert dv.max() <= FLOAT64_DV, f"max |dV| = {dv.max():.3g} V"
    else:
        assert same_count.mean() >= FLOAT32_AGREE, f"same spike count in {same_count.mean():.2%}"
        # "same spike count" with a shifted spike would make |dV| ~ 10 mV: compare V where the
        # spike trains are identical (a stricter subset), and require as many of those.
        assert same_train.mean() >= FLOAT32_AGREE, f"same spike train in {same_train.mean():.2%}"
        assert dv[same_train].max() <= FLOAT32_DV, f"max |dV| = {dv[same_train].max():.3g} V"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_eager_matches_reference_on_random_cases(random_cases, dtype):
    check_against_reference(random_cases, dtype, compile=False)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_eager_chunked_matches_reference(random_cases, dtype):
    check_against_reference(random_cases, dtype, compile=False, chunk_size=333)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_numba_kernel_matches_reference(random_cases, dtype):
    check_against_reference(random_cases, dtype, kernel="numba")


def test_default_cpu_kernel_is_numba_and_writes_into_out(random_cases):
    theta, current = random_cases["theta"][:50], torch.from_numpy(random_cases["current"][:50]).float()
    out = torch.full((50, N_SAMPLES), float("nan"))
    v = simulate(theta, current, out=out)
    assert v is out and torch.isfinite(out).all()
    assert torch.equal(v, simulate(theta, current, kernel="numba"))
    eager = simulate(theta, current, kernel="eager")
    assert torch.allclose(v, eager, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"kernel": "fast"}, "kernel must be one of auto, numba, triton, compiled, eager"),
        ({"out": torch.empty(3, 501)}, r"out must be a contiguous \(50, 501\)"),
        ({"out": torch.empty(50, 501, dtype=torch.float64)}, "out must be"),
    ],
)
def test_bad_kernel_or_out(random_cases, kw, match):
    theta, current = random_cases["theta"][:50], random_cases["current"][:50]
    with pytest.raises(ValueError, match=match):
        simulate(theta, current, **kw)


@pytest.mark.slow  # 50 s of torch.compile on the CPU (the CUDA path's kernel; checked on the GPU by the gpu tests)
def test_compiled_matches_reference(random_cases):
    """compile=True (torch.compile'd 20-step blocks), both dtypes, whole batch and ragged chunks.

    The first call compiles (~5-15 s per dtype on a 2-core CPU); chunks reuse the dynamic-shape kernel.
    """
    for dtype in (torch.float32, torch.float64):
        with _no_fallback_warning():
            check_against_reference(random_cases, dtype, compile=True)
        check_against_reference(random_cases, dtype, compile=True, chunk_size=768)  # 768 + 768 + 464


class _no_fallback_warning:
    """Fail if torch.compile fell back to eager (the test would then not test the compiled path)."""

    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings(record=True)
        self._rec = self._cm.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)
        msgs = [str(w.message) for w in self._rec if "torch.compile of the LIF step failed" in str(w.message)]
        if msgs:
            pytest.skip(f"torch.compile unavailable here: {msgs[0]}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("kernel", ["eager", "compiled", "triton"])
def test_cuda_matches_reference_and_cpu(random_cases, dtype, kernel):
    theta, current = random_cases["theta"], random_cases["current"]
    cur = torch.from_numpy(current).to(dtype)
    check_against_reference(random_cases, dtype, device="cuda", kernel=kernel)
    v_gpu = simulate(theta, cur.cuda(), dtype=dtype, kernel=kernel)
    assert v_gpu.device.type == "cuda"
    if kernel == "triton":  # the Numba kernel's arithmetic, without FMA contraction: the same bits
        assert torch.equal(v_gpu.cpu(), simulate(theta, cur, dtype=dtype, kernel="numba"))
    v_cpu = simulate(theta, cur, dtype=dtype, compile=False)
    # the CPU run is the reference here, in the same dtype as the CUDA run
    same_count, same_train, dv = compare(theta, v_cpu.numpy(), v_gpu, dtype, ref_dtype=v_cpu.numpy().dtype)
    if dtype == torch.float64:
        assert same_train.all() and dv.max() <= FLOAT64_DV
    else:
        assert same_train.mean() >= FLOAT32_AGREE and dv[same_train].max() <= FLOAT32_DV


@pytest.mark.gpu
def test_cuda_picks_the_triton_kernel(random_cases):
    theta, cur = random_cases["theta"][:100], torch.from_numpy(random_cases["current"][:100]).float().cuda()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: the Triton kernel compiled and ran
        v = simulate(theta, cur)
    assert torch.equal(v, simulate(theta, cur, kernel="triton"))


def test_the_triton_kernel_needs_cuda_or_the_interpreter(random_cases):
    """Without TRITON_INTERPRET the Triton kernel refuses the CPU (tests/test_triton_kernel.py runs it interpreted)."""
    theta, current = random_cases["theta"][:5], random_cases["current"][:5]
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("this process runs Triton's interpreter")
    with pytest.raises(ValueError, match="kernel='triton' needs a CUDA device and the triton package"):
        simulate(theta, current, kernel="triton")


# --------------------------------------------------------------------------------------------
# hand-made cases


def one_theta(c_m=100e-12, g_l=10e-9, e_l=-70e-3, v_th=-55e-3, v_res=-75e-3, t_ref=2.05e-3):
    return np.array([[c_m, g_l, e_l, v_th, v_res, t_ref]])


def euler(v, i_a, theta):
    c_m, g_l, e_l = theta[0, C], theta[0, G], theta[0, E]
    return v + (-(v - e_l) + i_a / g_l) * DT_S * g_l / c_m


@pytest.mark.parametrize("t_ref", [2.05e-3, 1.95e-3, 1.01e-3, 3.3333e-3, 4.99e-3])
@pytest.mark.parametrize("impl", ["reference", "eager"])
def test_refractory_clamp_and_reset(t_ref, impl):
    """t_ref off the dt grid: each spike sample is V_res, then exactly ceil(t_ref/dt) - 1 more."""
    theta = one_theta(t_ref=t_ref)
    n_ref = math.ceil(t_ref / DT_S) - 1
    assert refractory_steps(t_ref) == n_ref
    i_a = 1.0e-9  # V_inf = E_L + I/g_L = +30 mV: spikes as soon as the clamp lets go
    current = np.full((1, N_SAMPLES), i_a)
    if impl == "reference":
        v = simulate_reference(theta, current)[0]
    else:
        v = simulate(theta, current, dtype=torch.float64, compile=False)[0].numpy()
    e_l, v_th, v_res = theta[0, E], theta[0, TH], theta[0, R]
    assert v[0] == e_l
    spikes = []
    i = 1
    while i < N_SAMPLES:
        step = euler(v[i - 1], i_a, theta)
        if step >= v_th:
            # the threshold-crossing sample is set to V_res exactly, then n_ref samples are clamped
            assert v[i] == v_res, f"sample {i}: crossing not reset"
            spikes.append(i)
            clamp = v[i + 1 : i + 1 + n_ref]
            assert np.all(clamp == v_res), f"clamp after spike {i}: {clamp}"
            i += 1 + n_ref
            if i < N_SAMPLES:  # integration resumes from V_res on the next sample
                assert v[i] != v_res
        else:
            assert abs(v[i] - step) <= 1e-15, f"sample {i}: {v[i]} vs Euler {step}"
            i += 1
    assert len(spikes) >= 3
    isi = np.diff(spikes)
    assert np.all(isi == isi[0]) and isi[0] > n_ref + 1  # constant current: identical intervals


def test_refractory_steps_counts():
    t = np.array([1.05e-3, 1.95e-3, 2.05e-3, 4.999e-3, 1.00001e-3])
    np.testing.assert_array_equal(refractory_steps(t), [10, 19, 20, 49, 10])


@pytest.mark.parametrize("i_na", [0.4, 0.66, 1.0, 2.0])
def test_constant_current_isi_closed_form(i_na):
    """Independent check of the interspike interval under a constant current I.

    (a) Exact discrete closed form of forward Euler: after the clamp, V_k - V_inf = (V_res - V_inf)
        (1 - dt/tau)^k, so the crossing step is k* = ceil(ln((V_th - V_inf)/(V_res - V_inf)) / ln(1 - dt/tau))
        and ISI = n_ref + k* samples exactly.
    (b) Continuous-time LIF: ISI = t_ref + tau ln((V_res - V_inf)/(V_th - V_inf)). With tau = 40 ms
        (dt/tau = 0.0025) the Euler error is < 0.2 samples, and t_ref = 2.05 ms puts the clamp
        0.5 sample early; so the simulated ISI must agree within one sample.
    """
    i_a = i_na * 1e-9
    theta = one_theta(c_m=200e-12, g_l=5e-9, e_l=-70e-3, v_th=-50e-3, v_res=-75e-3, t_ref=2.05e-3)
    c_m, g_l, e_l, v_th, v_res, t_ref = theta[0]
    tau, v_inf = c_m / g_l, e_l + i_a / g_l
    n_ref = math.ceil(t_ref / DT_S) - 1
    v = simulate(theta, np.full((1, N_SAMPLES), i_a), dtype=torch.float64, compile=False)[0].numpy()
    spikes = spike_times(v[None], np.array([v_res]), np.array([n_ref]))[0]
    assert len(spikes) >= 3
    isi = np.diff(spikes)
    assert np.all(isi == isi[0])
    # (a)
    x = math.log((v_th - v_inf) / (v_res - v_inf)) / math.log(1 - DT_S / tau)
    assert abs(x - round(x)) > 1e-6  # the crossing is not a rounding tie
    assert isi[0] == n_ref + math.ceil(x)
    # (b)
    isi_continuous = t_ref + tau * math.log((v_res - v_inf) / (v_th - v_inf))
    assert abs(isi[0] * DT_S - isi_continuous) <= DT_S
    # the first spike starts from E_L rather than V_res: t_1 ~ tau ln((E_L - V_inf)/(V_th - V_inf))
    assert abs(spikes[0] * DT_S - tau * math.log((e_l - v_inf) / (v_th - v_inf))) <= DT_S


# --------------------------------------------------------------------------------------------
# batching, layouts, reproducibility


def test_batched_equals_one_at_a_time(random_cases):
    theta, current = random_cases["theta"][:60], random_cases["current"][:60]
    batch = simulate(theta, current, dtype=torch.float64, compile=False)
    for k in range(len(theta)):
        one = simulate(theta[k : k + 1], current[k : k + 1], dtype=torch.float64, compile=False)
        assert torch.equal(one[0], batch[k]), f"row {k}"
    assert torch.equal(simulate(theta, current, dtype=torch.float64, compile=False, chunk_size=7), batch)


def test_input_types_and_output(random_cases):
    theta, current = random_cases["theta"][:20], random_cases["current"][:20]
    a = simulate(theta, current)
    assert a.dtype == torch.float32 and a.shape == (20, N_SAMPLES) and a.device.type == "cpu"
    b = simulate(torch.from_numpy(theta), torch.from_numpy(current).float())
    c = simulate(theta.tolist(), current.astype(np.float32))
    assert torch.equal(a, b) and torch.equal(a, c)


def test_simulate_batch_reproducible():
    a = simulate_batch(300, seed=17)
    b = simulate_batch(300, seed=17)
    c = simulate_batch(300, seed=18)
    assert set(a) == {"parameters", "observables", "current", "amplitude"}
    assert a["parameters"].shape == (300, 6) and a["observables"].shape == (300, N_SAMPLES, 1)
    assert a["current"].shape == (300, N_SAMPLES) and a["amplitude"].shape == (300,)
    for k in a:
        assert a[k].dtype == np.float32
        np.testing.assert_array_equal(a[k], b[k])  # bitwise (NaN-free)
        assert a[k].tobytes() == b[k].tobytes()
        assert not np.array_equal(a[k], c[k])
    # the arrays are the prior and stimulus drawn from one generator seeded with `seed`, then simulate
    gen = torch.Generator().manual_seed(17)
    theta = sample_prior_torch(300, gen)
    current, amplitude, _ = sample_current(300, gen)
    np.testing.assert_array_equal(a["parameters"], theta.float().numpy())
    np.testing.assert_array_equal(a["current"], current.float().numpy())
    np.testing.assert_array_equal(a["amplitude"], amplitude.float().numpy())
    np.testing.assert_array_equal(a["observables"][:, :, 0], simulate(theta, current).numpy())


# --------------------------------------------------------------------------------------------
# bad input


def good_inputs(n=3):
    theta = sample_prior(n, 0)
    return theta, np.full((n, N_SAMPLES), 0.5e-9)


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda t, c: (t[:, :5], c), r"theta must have shape \(N, 6\)"),
        (lambda t, c: (t[0], c), r"theta must have shape \(N, 6\)"),
        (lambda t, c: (t[:0], c[:0]), "at least one"),
        (lambda t, c: (t, c[:, :1]), r"current must have shape \(N, samples\) = \(3, samples >= 2\).*\(3, 1\)"),
        (lambda t, c: (t, c[:2]), r"current must have shape .*\(2, 501\)"),
        (lambda t, c: (t, c[0]), r"current must have shape"),
        (lambda t, c: (_set(t, 1, "C_m", np.nan), c), r"theta\[1\] C_m is nan; expected a finite value"),
        (lambda t, c: (_set(t, 0, "t_ref", np.inf), c), r"t_ref is inf; expected a finite value"),
        (lambda t, c: (t, _set_c(c, np.nan)), "current must be finite"),
        (lambda t, c: (t, _set_c(c, -np.inf)), "current must be finite"),
        (lambda t, c: (_set(t, 2, "C_m", 300e-12), c), r"theta\[2\] C_m = 300 pF is outside the prior's support \[100, 200\] pF"),
        (lambda t, c: (_set(t, 0, "t_ref", 0.5e-3), c), r"t_ref = 0.5 ms is outside .*\[1, 5\] ms"),
        (lambda t, c: (_set(t, 0, "V_th", -45e-3), c), r"V_th = -45 mV is outside"),
        # inside every range but V_res >= E_L
        (lambda t, c: (_set(_set(t, 1, "E_L", -75e-3), 1, "V_res", -74e-3), c), r"theta\[1\] violates V_res < E_L < V_th"),
        (lambda t, c: (_set(_set(t, 1, "E_L", -72e-3), 1, "V_res", -72e-3), c), r"V_res < E_L.*V_res = -72 mV, E_L = -72 mV"),
        # E_L >= V_th needs an E_L outside its own range (the boxes do not overlap): named too
        (lambda t, c: (_set(_set(t, 0, "E_L", -55e-3), 0, "V_th", -56e-3), c), r"E_L = -55 mV is outside"),
    ],
)
def test_bad_input_raises_value_error(edit, match):
    theta, current = edit(*good_inputs())
    with pytest.raises(ValueError, match=match):
        simulate(theta, current, compile=False)


def _set(theta, row, name, value):
    theta = np.array(theta, dtype=np.float64)
    theta[row, INDEX[name]] = value
    return theta


def _set_c(current, value):
    current = current.copy()
    current[1, 250] = value
    return current


@pytest.mark.parametrize("dt", [0, -1e-4, float("nan"), float("inf"), "1e-4", None])
def test_bad_dt(dt):
    theta, current = good_inputs()
    with pytest.raises(ValueError, match="dt must be a positive finite number of seconds"):
        simulate(theta, current, dt)


def test_bad_torch_inputs():
    theta, current = good_inputs()
    cur = torch.from_numpy(current)
    cur[0, 3] = float("nan")
    with pytest.raises(ValueError, match="current must be finite"):
        simulate(torch.from_numpy(theta), cur)


@pytest.mark.parametrize("n", [0, -1, 2.5, True])
def test_simulate_batch_bad_n(n):
    with pytest.raises(ValueError, match="n must be a positive integer"):
        simulate_batch(n, seed=0)


@pytest.mark.parametrize("seed", [-1, 1.5, "3"])
def test_simulate_batch_bad_seed(seed):
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        simulate_batch(4, seed=seed)


def test_resolve_device():
    has_cuda = torch.cuda.is_available()
    assert simulator.resolve_device("auto") == ("cuda" if has_cuda else "cpu")
    assert simulator.resolve_device("cpu") == "cpu"
    if has_cuda:
        assert simulator.resolve_device("cuda") == "cuda"
    else:
        with pytest.raises(ConfigError, match="data.device = 'cuda' .* no CUDA device"):
            simulator.resolve_device("cuda")
    with pytest.raises(ConfigError, match="data.device = 'gpu'"):
        simulator.resolve_device("gpu")


# --------------------------------------------------------------------------------------------
# other windows and steps, stimulus protocols and prior kinds

# (duration_s, dt_s, pulse onset range, pulse width range): a long window and a fine step
WINDOWS = {
    "500ms_at_0.1ms": (0.5, 1e-4, (0.01, 0.1), (0.1, 0.35)),
    "50ms_at_0.05ms": (0.05, 5e-5, (0.005, 0.015), (0.01, 0.03)),
}


@functools.lru_cache(maxsize=None)
def _window_cases(name: str, n: int, seed: int):
    """n prior draws and mixed coloured/step/ramp currents on the window `name`: (theta, current (n, T) float64, dt).
    Cached (the tests only read them)."""
    duration, dt, onset, width = WINDOWS[name]
    spec = StimulusConfig(protocols=("coloured", "step", "ramp"), duration_s=duration, dt_s=dt,
                          onset_low_s=onset[0], onset_high_s=onset[1], width_low_s=width[0], width_high_s=width[1])
    theta = sample_prior(n, np.random.default_rng(seed))
    current, _ = sample_stimulus(n, torch.Generator().manual_seed(seed), spec)
    assert current.shape == (n, spec.n_samples)
    return theta, current.numpy(), dt


@functools.lru_cache(maxsize=None)
def _reference(name: str, n: int, seed: int) -> np.ndarray:
    """simulate_reference of `_window_cases(name, n, seed)`, computed once for both kernels."""
    theta, current, dt = _window_cases(name, n, seed)
    return simulate_reference(theta, current, dt)


@pytest.mark.parametrize("kernel", ["eager", "numba"])
@pytest.mark.parametrize("window", list(WINDOWS))
def test_other_windows_and_steps_match_the_reference(window, kernel):
    """500 ms at 0.1 ms and 50 ms at 0.05 ms: float64 simulate gives simulate_reference's spike trains and voltages (1e-9 V)."""
    if kernel == "numba" and not simulator.cpu_kernel.AVAILABLE:
        pytest.skip("numba is not installed")
    theta, current, dt = _window_cases(window, 24, seed=31)
    v_ref = _reference(window, 24, 31)
    assert v_ref.shape == current.shape
    v = simulate(theta, current, dt, dtype=torch.float64, kernel=kernel).numpy()
    n_ref = refractory_steps(theta[:, TR], dt)
    ref_spikes, got_spikes = spike_times(v_ref, theta[:, R], n_ref), spike_times(v, theta[:, R], n_ref)
    assert sum(len(s) for s in ref_spikes) > 3 * len(theta)  # the comparison sees spikes and resets
    bad = [k for k, (a, b) in enumerate(zip(ref_spikes, got_spikes)) if not np.array_equal(a, b)]
    assert not bad, f"different spike trains in traces {bad}"
    assert np.abs(v - v_ref).max() <= FLOAT64_DV


@pytest.mark.parametrize("kernel", ["eager", "numba"])
def test_batched_equals_one_at_a_time_at_another_step(kernel):
    """At dt = 0.05 ms (1001 samples) each trace of a batch equals the same trace simulated alone, bit for bit."""
    if kernel == "numba" and not simulator.cpu_kernel.AVAILABLE:
        pytest.skip("numba is not installed")
    theta, current, dt = _window_cases("50ms_at_0.05ms", 12, seed=32)
    batch = simulate(theta, current, dt, dtype=torch.float64, kernel=kernel)
    assert batch.shape == (12, 1001)
    for k in range(len(theta)):
        assert torch.equal(simulate(theta[k : k + 1], current[k : k + 1], dt, dtype=torch.float64, kernel=kernel)[0], batch[k]), k


def test_two_sample_traces():
    """The shortest trace (T = 2): V_0 = E_L and V_1 one Euler step, in simulate and simulate_reference alike."""
    theta = sample_prior(5, np.random.default_rng(33))
    current = np.full((5, 2), 1e-9)
    v_ref = simulate_reference(theta, current, 5e-5)
    c_m, g_l, e_l = theta[:, C], theta[:, G], theta[:, E]
    np.testing.assert_array_equal(v_ref[:, 0], e_l)
    np.testing.assert_allclose(v_ref[:, 1], e_l + 1e-9 / g_l * 5e-5 * g_l / c_m, rtol=1e-12)
    np.testing.assert_allclose(simulate(theta, current, 5e-5, dtype=torch.float64).numpy(), v_ref, rtol=0, atol=1e-15)


@pytest.mark.parametrize("dt", [5e-5, 2.5e-5])
@pytest.mark.parametrize("i_na", [0.4, 1.0, 2.0])
def test_constant_current_isi_closed_form_at_another_step(dt, i_na):
    """At dt = 0.05 and 0.025 ms the ISI under a constant current is t_ref + tau ln((I R + E_L - V_res)/(I R + E_L - V_th)) within one step.

    As test_constant_current_isi_closed_form (which runs at the reference's 0.1 ms), with t_ref = 2.07 ms
    off both grids (41.4 and 82.8 steps): exactly n_ref + ceil(ln((V_th - V_inf)/(V_res - V_inf)) / ln(1 - dt/tau))
    samples in forward Euler, and within one step of the continuous-time interval.
    """
    i_a = i_na * 1e-9
    theta = one_theta(c_m=200e-12, g_l=5e-9, e_l=-70e-3, v_th=-50e-3, v_res=-75e-3, t_ref=2.07e-3)
    c_m, g_l, e_l, v_th, v_res, t_ref = theta[0]
    tau, r_m = c_m / g_l, 1 / g_l
    n_ref = math.ceil(t_ref / dt) - 1
    assert refractory_steps(t_ref, dt) == n_ref
    n_samples = int(round(0.1 / dt)) + 1  # 100 ms
    current = np.full((1, n_samples), i_a)
    v = simulate(theta, current, dt, dtype=torch.float64, compile=False)[0].numpy()
    np.testing.assert_allclose(v, simulate_reference(theta, current, dt)[0], rtol=0, atol=FLOAT64_DV)
    spikes = spike_times(v[None], np.array([v_res]), np.array([n_ref]))[0]
    assert len(spikes) >= 3
    isi = np.diff(spikes)
    assert np.all(isi == isi[0])
    v_inf = e_l + i_a * r_m
    x = math.log((v_th - v_inf) / (v_res - v_inf)) / math.log(1 - dt / tau)
    assert abs(x - round(x)) > 1e-6  # not a rounding tie
    assert isi[0] == n_ref + math.ceil(x)
    t_isi = t_ref + tau * math.log((i_a * r_m + e_l - v_res) / (i_a * r_m + e_l - v_th))
    assert abs(isi[0] * dt - t_isi) <= dt, (isi[0] * dt, t_isi)


def test_simulate_batch_with_a_stimulus_spec_and_prior_kind():
    """simulate_batch(stimulus=spec, prior="ordered"): traces of spec.n_samples, ordered parameters, the draws of one generator."""
    spec = StimulusConfig(protocols=("step", "ramp"), duration_s=0.02, dt_s=5e-5, onset_low_s=0.002, onset_high_s=0.006,
                          width_low_s=0.005, width_high_s=0.012)
    a = simulate_batch(200, seed=34, stimulus=spec, prior="ordered")
    assert a["parameters"].shape == (200, 6) and a["observables"].shape == (200, 401, 1)
    assert a["current"].shape == (200, 401) and a["amplitude"].shape == (200,)
    assert all(a[k].dtype == np.float32 for k in a)
    gen = torch.Generator().manual_seed(34)
    theta = sample_prior_torch(200, gen, kind="ordered")
    assert (theta[:, R] <= theta[:, E] - 2e-3).all()
    current, amplitude = sample_stimulus(200, gen, spec)
    np.testing.assert_array_equal(a["parameters"], theta.float().numpy())
    np.testing.assert_array_equal(a["current"], current.float().numpy())
    np.testing.assert_array_equal(a["amplitude"], amplitude.float().numpy())
    np.testing.assert_array_equal(a["observables"][:, :, 0], simulate(theta, current, 5e-5).numpy())
    b = simulate_batch(200, seed=34, stimulus=spec, prior="ordered")
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)
    assert not np.array_equal(simulate_batch(200, seed=34, stimulus=spec)["parameters"], a["parameters"])  # the prior kind matters


def test_simulate_batch_default_spec_is_the_reference_path():
    """simulate_batch with StimulusConfig() and prior="reference" gives the arrays of the reference path bit for bit."""
    ref = simulate_batch(150, seed=35)
    got = simulate_batch(150, seed=35, stimulus=StimulusConfig(), prior="reference")
    assert set(got) == set(ref) and all(got[k].tobytes() == ref[k].tobytes() for k in ref)


def test_simulate_batch_bad_prior_kind():
    """simulate_batch names the allowed prior kinds."""
    with pytest.raises(ValueError, match="prior kind must be one of reference, ordered"):
        simulate_batch(4, seed=0, prior="flat")
