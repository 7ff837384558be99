"""The torch backend's GRU (lif_sbi.backends.torch.gru_ops, gru_kernel): the opaque op under
torch.compile, the fused CPU kernel against PyTorch's native one, its build and fallback, shape
inference on meta tensors, and the backward op's unaliased outputs."""

from __future__ import annotations

import pytest

from backend_scripts import run_script


@pytest.mark.torch
def test_fast_gru_under_torch_compile_is_one_graph_with_the_eager_gradients():
    """Under torch.compile the torch GRU is an opaque op (lif_sbi::gru) instead of aten::gru's
    unrolled 37-cell decomposition: FastGRU traces into one graph, and the compiled forward and
    backward give the eager path's outputs and gradients (the backward op recomputes the native
    forward and differentiates it), on Keras' default device (cuDNN on a GPU).
    torch.library.opcheck checks the op's fake (shape) kernel and autograd registration."""
    code = """
import json, keras, numpy as np, torch
from lif_sbi import backends
from lif_sbi.backends.torch import gru_ops
from lif_sbi.networks import FastGRU
backends.set_seed(0)
rng = np.random.default_rng(0)
x = keras.ops.convert_to_tensor(rng.normal(size=(5, 37, 3)).astype("float32"))
out = {"device": backends.device_name(), "cases": []}
for return_sequences in (True, False):
    fast = FastGRU(8, return_sequences=return_sequences)
    fast.build((None, 37, 3))
    fast.bias.assign(rng.normal(scale=0.5, size=(2, 24)).astype("float32"))
    w = keras.ops.convert_to_tensor(rng.normal(size=(5, 37, 8) if return_sequences else (5, 8)).astype("float32"))

    def loss(x):
        with torch.enable_grad():
            return (fast(x, training=True) * w).sum()

    def value_and_grads(f):
        xt = x.clone().requires_grad_(True)
        with torch.enable_grad():
            value = f(xt)
            gs = torch.autograd.grad(value, [xt] + [v.value for v in fast.trainable_weights])
        return [value.detach().cpu().numpy()] + [g.detach().cpu().numpy() for g in gs]

    eager = value_and_grads(loss)
    compiled = value_and_grads(torch.compile(loss, fullgraph=True))
    explained = torch._dynamo.explain(loss)(x)
    out["cases"].append({"graphs": explained.graph_count, "ops": sorted({str(n.target) for g in explained.graphs
                                                                         for n in g.graph.nodes if "lif_sbi" in str(n.target)}),
                         "err": [float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30)) for a, b in zip(eager, compiled)],
                         "scale": [float(np.abs(a).max()) for a in eager]})
    torch._dynamo.reset()
op = gru_ops._compiled_gru
args = [x, torch.zeros(1, 5, 8, device=x.device)] + [torch.randn(*s, device=x.device) for s in ((24, 3), (24, 8), (24,), (24,))]
torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
print(json.dumps(out))
"""
    res = run_script("torch", code)
    assert len(res["cases"]) == 2
    for case in res["cases"]:
        assert case["graphs"] == 1 and case["ops"] == ["lif_sbi.gru.default"], case
        assert len(case["err"]) == 5  # loss, inputs, kernel, recurrent_kernel, bias
        assert case["err"][0] < 1e-5 and max(case["err"][1:]) < 1e-4, case
        assert min(case["scale"]) > 1e-3, case


@pytest.mark.torch
def test_torch_fused_cpu_gru_matches_native_gru():
    """Under torch on the CPU in float32, eager GRUs run on the fused kernel (backends/torch/gru_cpu.cpp),
    which builds here, and it agrees with PyTorch's native GRU: outputs within 1e-5, gradients
    (inputs, initial state, weights, biases) within 1e-5 relative, for a long sequence, a single
    step and one unit; without autograd too; a NaN in the input gives NaN out, as the native GRU's
    does. LIF_SBI_NATIVE_GRU=1 turns it off."""
    code = """
import json, keras, numpy as np, torch
from lif_sbi.backends.torch import gru_kernel, gru_ops
torch.manual_seed(0)
on_cpu = keras.device("cpu:0")  # the fused kernel is the CPU's; keep a GPU machine's tensors there
on_cpu.__enter__()  # (named: an unreferenced scope is finalised, and left, at once)
out = {"built": gru_kernel._cpu_kernel() is not None, "cases": []}
for b, t, d, h in [(16, 301, 32, 64), (4, 1, 3, 5), (2, 9, 1, 1)]:
    x, h0 = torch.randn(b, t, d), 0.5 * torch.randn(1, b, h)
    params = [0.3 * torch.randn(3 * h, d), 0.3 * torch.randn(3 * h, h), 0.3 * torch.randn(3 * h), 0.3 * torch.randn(3 * h)]
    fused_in = [a.clone().requires_grad_() for a in (x, h0, *params)]
    native_in = [a.clone().requires_grad_() for a in (x, h0, *params)]
    with torch.enable_grad():
        y, last = gru_ops._eager_gru(fused_in[0], fused_in[1], fused_in[2:], True)
        y_ref, last_ref = gru_ops._native_gru(native_in[0], native_in[1], native_in[2:], True)
        gy, gl = torch.randn_like(y_ref), torch.randn_like(last_ref)
        g = torch.autograd.grad((y, last), fused_in, (gy, gl))
        g_ref = torch.autograd.grad((y_ref, last_ref), native_in, (gy, gl))
    with torch.no_grad():
        y_nograd, last_nograd = gru_ops._eager_gru(x, h0, params, False)
        x_nan = x.clone()
        x_nan[0, 0, 0] = float("nan")  # the kernel saturates its gates: a NaN must not vanish there
        nan_out = bool(torch.isnan(gru_ops._eager_gru(x_nan, h0, params, False)[1]).any())
    out["cases"].append({
        "nan_out": nan_out,
        "node": type(y.grad_fn).__name__,
        "shapes": [list(y.shape), list(last.shape)],
        "out_err": max(float((y - y_ref).abs().max()), float((last - last_ref).abs().max())),
        "nograd_err": max(float((y_nograd - y_ref).abs().max()), float((last_nograd - last_ref).abs().max())),
        "grad_err": [float((a - r).abs().max() / r.abs().max().clamp_min(1e-30)) for a, r in zip(g, g_ref)],
        "grad_scale": [float(r.abs().max()) for r in g_ref],
    })
print(json.dumps(out))
"""
    res = run_script("torch", code)
    assert res["built"], res
    assert [c["shapes"] for c in res["cases"]] == [[[16, 301, 64], [1, 16, 64]], [[4, 1, 5], [1, 4, 5]], [[2, 9, 1], [1, 2, 1]]]
    for case in res["cases"]:
        assert case["node"] == "_FusedCpuGRUBackward", case  # the fused kernel ran, not the native one
        assert case["nan_out"], case
        assert case["out_err"] < 1e-5 and case["nograd_err"] < 1e-5, case
        assert len(case["grad_err"]) == 6 and max(case["grad_err"]) < 1e-5, case
        assert min(case["grad_scale"]) > 1e-3, case
    off = run_script("torch", """
import json, os
os.environ["LIF_SBI_NATIVE_GRU"] = "1"
from lif_sbi.backends.torch import gru_kernel
print(json.dumps({"kernel": repr(gru_kernel._cpu_kernel())}))
""")
    assert off["kernel"] == "None", off


@pytest.mark.torch
def test_torch_gru_falls_back_to_the_native_kernel_where_the_fused_one_cannot_be_built():
    """No C++ compiler (here: cpp_extension.load fails): one warning naming the reason, and the
    GRU runs on PyTorch's native kernel with the same values."""
    code = """
import json, warnings, torch
from torch.utils import cpp_extension
def no_compiler(*args, **kwargs):
    raise RuntimeError("Ninja is required to load C++ extensions")
cpp_extension.load = no_compiler
from lif_sbi.backends.torch import gru_kernel, gru_ops
x, h0 = torch.randn(3, 7, 2), torch.zeros(1, 3, 4)
params = [torch.randn(12, 2), torch.randn(12, 4), torch.randn(12), torch.randn(12)]
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    y, _ = gru_ops._eager_gru(x, h0, params, False)
    y2, _ = gru_ops._eager_gru(x, h0, params, False)
ref, _ = gru_ops._native_gru(x, h0, params, False)
print(json.dumps({"messages": [str(w.message) for w in caught], "err": float((y - ref).abs().max()),
                  "kernel": repr(gru_kernel._cpu_kernel())}))
"""
    res = run_script("torch", code)
    assert res["kernel"] == "None" and res["err"] == 0, res
    assert len(res["messages"]) == 1, res  # once per process, not per call
    assert "could not be built (Ninja is required" in res["messages"][0] and "native GRU" in res["messages"][0], res


@pytest.mark.slow  # 50 s: rebuilds the kernel; the fresh build is checked by the suite's other GRU tests
@pytest.mark.torch
def test_torch_fused_gru_kernel_builds_past_a_stale_lock(tmp_path, monkeypatch):
    """A process killed while it built or loaded the kernel leaves cpp_extension's lock file,
    and every later process would wait on it forever. A lock older than ten minutes is removed;
    here the kernel is built from scratch in an empty TORCH_EXTENSIONS_DIR that holds one. The
    build is announced in one line on stderr; loading the built kernel says nothing."""
    code = """
import json, os, time
from lif_sbi.backends.torch import gru_kernel
lock = os.path.join(gru_kernel._cpu_kernel_build_dir(), "lock")
os.makedirs(os.path.dirname(lock), exist_ok=True)
open(lock, "w").close()
os.utime(lock, (time.time() - 3600, time.time() - 3600))  # left by a process killed an hour ago
import contextlib, io
said = io.StringIO()
with contextlib.redirect_stderr(said):
    kernel = gru_kernel._cpu_kernel()
    again = gru_kernel._build_cpu_kernel()  # built now: loaded without a word
print(json.dumps({"built": kernel is not None and again is not None, "lock_left": os.path.exists(lock),
                  "in_tmp": gru_kernel._cpu_kernel_build_dir().startswith(os.environ["TORCH_EXTENSIONS_DIR"]), "stderr": said.getvalue()}))
"""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))  # run_script passes os.environ on
    res = run_script("torch", code, timeout=300)  # a build takes ~25 s; with the stale lock left in place this would wait forever
    assert res["built"] and res["in_tmp"] and not res["lock_left"], res
    assert res["stderr"].count("building the fused CPU GRU kernel") == 1, res  # said once, when it builds


@pytest.mark.torch
def test_torch_gru_infers_shapes_on_meta_tensors_without_running():
    """Keras infers a layer's output shape under torch by running it on meta tensors (building,
    loading a saved model); there the GRU returns empty tensors of the right shapes instead of
    running PyTorch's GRU, which on meta tensors steps through time in Python (1.6 s for one
    reference-sized GRU). Checked: shapes and dtype, and no native GRU call while the reference
    summary network is built and a model holding it is loaded."""
    code = """
import json, tempfile, keras, numpy as np, torch
from lif_sbi import estimator
from lif_sbi.backends.torch import gru_kernel, gru_ops
from lif_sbi.config import load_config
meta = lambda *shape: torch.empty(*shape, device="meta")
y, h = gru_ops._eager_gru(meta(5, 501, 3), meta(1, 5, 7), [meta(21, 3), meta(21, 7), meta(21), meta(21)], True)
out = {"shapes": [list(y.shape), list(h.shape)], "devices": [y.device.type, h.device.type], "dtype": str(y.dtype)}
calls = []
native = gru_ops._native_gru
def counting(x, h0, params, train):
    calls.append(x.device.type)
    return native(x, h0, params, train)
gru_ops._native_gru = counting
gru_kernel._cpu_kernel_state["module"] = None  # the native kernel on real tensors, so that every GRU call is seen
cfg = load_config("ci", ["model.summary_network=reference"]).model
approx = estimator.build_approximator(cfg)
rng = np.random.default_rng(0)
data = {"parameters": rng.uniform(size=(4, 6)), "observables": rng.normal(size=(4, 501, 1))}
approx.build_from_data(approx.adapter(data))
with tempfile.TemporaryDirectory() as d:
    approx.save(d + "/m.keras")
    calls.clear()
    loaded = estimator.load_approximator(d + "/m.keras")
    out["load_calls"] = list(calls)
    loaded.summarize({"observables": data["observables"]})
    out["real_calls"] = sorted(set(calls))
out["device"] = keras.ops.zeros(()).device.type  # where Keras computes: the CPU, or CUDA on a GPU
print(json.dumps(out))
"""
    res = run_script("torch", code)
    assert res["shapes"] == [[5, 501, 7], [1, 5, 7]] and res["devices"] == ["meta", "meta"] and res["dtype"] == "torch.float32", res
    assert "meta" not in res["load_calls"], res
    assert res["real_calls"] == [res["device"]], res  # the counter sees the GRU when it does run


@pytest.mark.torch
def test_torch_gru_backward_op_never_returns_aliased_tensors():
    """A custom op's outputs may alias neither its inputs nor each other (torch checks this when
    the op runs; on CUDA, cuDNN's weight gradients can be views of one flat buffer). The op clones such outputs. Here views of one buffer and an input stand in for them."""
    code = """
import json, torch
from lif_sbi.backends.torch import gru_ops
flat = torch.arange(12.0)
x = torch.ones(3)
a, b, c = flat[:4], flat[4:8], flat[8:]
out = gru_ops._unaliased([a, b, x, c, torch.zeros(2)], [x])
ptrs = [t.untyped_storage().data_ptr() for t in out]
print(json.dumps({"distinct": len(set(ptrs)) == len(ptrs), "x_kept_out": x.untyped_storage().data_ptr() not in ptrs,
                  "values": [t.tolist() for t in out], "first_kept": out[0].data_ptr() == a.data_ptr()}))
"""
    res = run_script("torch", code)
    assert res["distinct"] and res["x_kept_out"], res
    assert res["first_kept"], res  # the first view of the buffer needs no copy
    assert res["values"] == [[0, 1, 2, 3], [4, 5, 6, 7], [1, 1, 1], [8, 9, 10, 11], [0, 0]]
