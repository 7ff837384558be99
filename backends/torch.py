"""PyTorch backend: the GRU runs on a fused CPU kernel or PyTorch's native one (``torch._VF.gru``).

Keras' own torch GRU uses the native kernel only on CUDA; on the CPU it falls back to a Python
loop over time steps whose backward pass is quadratic in the sequence length (about 15 s per
training step for the reference network). Here the Keras weights are permuted from Keras' gate
order (z, r, h) to PyTorch's (r, z, n) and transposed with differentiable ops, so gradients flow
back to the Keras variables. PyTorch's n-gate, n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),
is Keras' ``reset_after=True`` formula. On the CPU in float32, eager, the GRU runs on this
project's own kernel (``gru_cpu.cpp``, built on first use; see ``_cpu_kernel``), which trains in
about half the native kernel's time; elsewhere on the native kernel. Under torch.compile
(``training.jit_compile = true``) the native kernel is called as one opaque custom op,
``lif_sbi::gru`` (see below). Independent
GRUs (``gru_many``) run side by side on the CPU, one Python thread each. Eager training and
validation steps are recorded once per batch shape and replayed (``prepare_training``,
``_RecordedSteps``): as CUDA graphs on a GPU, as traced aten programs on the CPU; on the CPU,
Keras' Adam updates from flat buffers (``_adam_on_flat_buffers``). Importing this module turns on
flush-to-zero for denormal floats (see below).
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bayesflow.approximators.helpers.samplers import Sampler

from ._common import RecordedSampler, seed_keras
from ._common import training_step_kind as _compiled_or_eager

name = "torch"

# Flush denormals to zero on the CPU, as TensorFlow does in its own thread pools. Without it the
# GRU's backward pass drifts into denormal floats within a few training steps and a reference
# training step slows from ~0.7 s to 5-15 s on this project's CPU (aten::mm and tanh become
# ~100x slower). Process-wide; harmless for the simulator (denormals are < 1e-38 in float32).
torch.set_flush_denormal(True)

# With training.jit_compile = true, torch.compile traces Keras' dtype helpers, which are
# functools.lru_cache-wrapped; dynamo warns about each one (dozens of multi-line warnings) although
# the cache only memoises pure functions of dtypes.
warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`-wrapped function")


def _as_tensor(x):
    # keras.ops.convert_to_tensor unwraps a Keras Variable to its torch Parameter (keeps the
    # autograd connection) and moves NumPy input to the default device.
    return keras.ops.convert_to_tensor(x)


def _torch_params(kernel, recurrent_kernel, bias):
    """Keras (in, 3u), (u, 3u), (2, 3u) in gate order z, r, h -> PyTorch w_ih, w_hh, b_ih, b_hh."""
    z_k, r_k, h_k = torch.chunk(kernel, 3, dim=1)
    z_r, r_r, h_r = torch.chunk(recurrent_kernel, 3, dim=1)
    w_ih = torch.cat([r_k, z_k, h_k], dim=1).t().contiguous()
    w_hh = torch.cat([r_r, z_r, h_r], dim=1).t().contiguous()
    z_bi, r_bi, h_bi = torch.chunk(bias[0], 3)
    z_bh, r_bh, h_bh = torch.chunk(bias[1], 3)
    b_ih = torch.cat([r_bi, z_bi, h_bi])
    b_hh = torch.cat([r_bh, z_bh, h_bh])
    return [w_ih, w_hh, b_ih, b_hh]


def _gru_arguments(inputs, kernel, recurrent_kernel, bias, initial_state):
    """Tensors for `_native_gru`: x (batch, time, in) contiguous, h0 (1, batch, u), PyTorch params."""
    kernel = _as_tensor(kernel)
    recurrent_kernel = _as_tensor(recurrent_kernel)
    bias = _as_tensor(bias)
    x = _as_tensor(inputs).to(dtype=kernel.dtype)
    units = recurrent_kernel.shape[0]
    if initial_state is None:
        h0 = torch.zeros(1, x.shape[0], units, dtype=x.dtype, device=x.device)
    else:
        h0 = _as_tensor(initial_state).to(dtype=x.dtype).unsqueeze(0)
    return x.contiguous(), h0.contiguous(), _torch_params(kernel, recurrent_kernel, bias)


def gru(inputs, kernel, recurrent_kernel, bias, *, return_sequences: bool, initial_state=None):
    """GRU forward (Keras reset_after=True layout) on PyTorch's native kernel.

    inputs: (batch, time, in); kernel: (in, 3u); recurrent_kernel: (u, 3u); bias: (2, 3u).
    Returns (batch, time, u) if return_sequences else the last state (batch, u).
    """
    x, h0, params = _gru_arguments(inputs, kernel, recurrent_kernel, bias, initial_state)
    if torch.compiler.is_compiling():
        outputs, h_n = _compiled_gru(x, h0, *params)
    else:
        outputs, h_n = _eager_gru(x, h0, params, torch.is_grad_enabled())
    return outputs if return_sequences else h_n[0]


def gru_many(calls, *, return_sequences: bool):
    """``[gru(*call, return_sequences=...) for call in calls]``, the GRUs run side by side on the CPU.

    calls: a sequence of ``(inputs, kernel, recurrent_kernel, bias)``, independent GRUs (say the
    two directions of a bidirectional one). On the CPU, eager, with two or more intra-op threads,
    each GRU's native kernel (and, when training, its backward pass) runs on its own Python
    thread with the intra-op threads shared out among them; PyTorch releases the GIL inside its
    ops. A GRU step's (64 x 128) @ (128 x 384) product is too small to keep two cores busy, so
    this is what uses them: TensorFlow's graph executor runs independent GRUs side by side in the
    same way. The values, gradients included, are the same as one GRU after the other.
    Elsewhere (CUDA, where kernels are asynchronous anyway; torch.compile; one thread) it is the
    plain loop.
    """
    if torch.compiler.is_compiling() or len(calls) < 2:  # (first: dynamo breaks on get_num_threads)
        return [gru(*call, return_sequences=return_sequences) for call in calls]
    prepared = [_gru_arguments(*call, None) for call in calls]
    grad = torch.is_grad_enabled()
    flat = [t for x, h0, params in prepared for t in (x, h0, *params)]
    if torch.get_num_threads() < 2 or any(x.device.type != "cpu" for x, _, _ in prepared):
        results = [t for x, h0, params in prepared for t in _eager_gru(x, h0, params, grad)]
    elif grad and any(t.requires_grad for t in flat):
        results = _ConcurrentGRUs.apply(len(prepared), *flat)
    else:
        results = [t for pair in _side_by_side([_gru_task(x, h0, params, grad=False) for x, h0, params in prepared]) for t in pair]
    outputs, last = results[0::2], results[1::2]
    return list(outputs) if return_sequences else [h_n[0] for h_n in last]


# Hand-written (no library runs independent ops of an eager PyTorch program side by side): a
# small thread pool per worker count, and an autograd Function that builds each GRU's autograd
# graph on its own thread and runs each graph's backward pass on its own thread.
_POOLS: dict[int, ThreadPoolExecutor] = {}


def _side_by_side(tasks):
    """Run the no-argument callables `tasks` on up to torch.get_num_threads() Python threads, each
    with an equal share of the intra-op threads (restored afterwards); their results in order."""
    threads = torch.get_num_threads()
    workers = max(1, min(len(tasks), threads))
    pool = _POOLS.get(workers)
    if pool is None:
        # flush-to-zero is a per-thread CPU flag: the workers need it as much as the main thread
        pool = _POOLS[workers] = ThreadPoolExecutor(
            workers, thread_name_prefix="lif_sbi_gru", initializer=torch.set_flush_denormal, initargs=(True,)
        )

    def run(task):
        torch.set_num_threads(threads // workers)
        return task()

    try:
        return list(pool.map(run, tasks))
    finally:
        torch.set_num_threads(threads)


def _gru_task(x, h0, params, *, grad: bool):
    def task():
        with torch.set_grad_enabled(grad):  # grad mode is per thread
            return _eager_gru(x, h0, params, grad)

    return task


class _ConcurrentGRUs(torch.autograd.Function):
    """Several independent native GRUs, forward and backward, side by side (see `gru_many`).

    Inputs: the number of GRUs, then per GRU x, h0, w_ih, w_hh, b_ih, b_hh. Outputs: per GRU the
    (batch, time, u) outputs and the (1, batch, u) last state. Each GRU's own autograd graph (the
    native kernel's derivative) is kept on the context and differentiated on its own thread.
    """

    @staticmethod
    def forward(ctx, n_grus, *flat):
        leaves = [t.detach().requires_grad_(need) for t, need in zip(flat, ctx.needs_input_grad[1:])]
        per_gru = len(flat) // n_grus  # x, h0 and the four PyTorch parameters
        groups = [leaves[per_gru * i : per_gru * (i + 1)] for i in range(n_grus)]
        results = _side_by_side([_gru_task(g[0], g[1], g[2:], grad=True) for g in groups])
        ctx.graphs = list(zip(groups, results))
        return tuple(t.detach() for pair in results for t in pair)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        graphs, ctx.graphs = ctx.graphs, None
        if graphs is None:
            raise RuntimeError("lif_sbi: backward through the same side-by-side GRUs a second time is not supported")

        def task(i):
            inputs, outputs = graphs[i]
            pairs = [(o, g) for o, g in zip(outputs, grads[2 * i : 2 * i + 2]) if g is not None]
            wanted = [t for t in inputs if t.requires_grad]

            def run():
                if not pairs or not wanted:
                    return [None] * len(inputs)
                outs, grad_outs = zip(*pairs)
                with torch.enable_grad():
                    got = iter(torch.autograd.grad(outs, wanted, grad_outs, allow_unused=True))
                return [next(got) if t.requires_grad else None for t in inputs]

            return run

        per_gru = _side_by_side([task(i) for i in range(len(graphs))])
        return (None, *[g for grads_i in per_gru for g in grads_i])


def _eager_gru(x, h0, params, grad: bool):
    """One GRU outside torch.compile: (batch, time, u) outputs and (1, batch, u) last state.

    On this project's fused kernel where it applies (CPU, float32, built), else the native one.
    `grad`: whether autograd is recording (the fused kernel then keeps what its backward needs).
    """
    if x.device.type == "meta":
        # Keras infers output shapes (building a layer, loading a model) by running it on meta
        # tensors, where PyTorch's GRU is decomposed into Python time step by time step: loading a
        # reference-network model took 3.7-3.9 s, now 1.9-2.1 s (bench/inference_compile.py's
        # load_s, 2-core CPU). Shapes only.
        units = params[1].shape[1]
        return x.new_empty((x.shape[0], x.shape[1], units)), x.new_empty((1, x.shape[0], units))
    if x.device.type == "cpu":
        _CPU_GRU_CALLS["n"] += 1  # (for _TracedSteps; a plain counter: exactness under threads does not matter)
    kernel = _cpu_kernel() if x.device.type == "cpu" and x.dtype == torch.float32 else None
    if kernel is None:
        return _native_gru(x, h0, params, grad)
    if grad and any(t.requires_grad for t in (x, h0, *params)):
        return _FusedCpuGRU.apply(x, h0, *params)
    hs = kernel.forward(x, h0[0], *params, False)[0]
    return hs[1:].transpose(0, 1), hs[-1:]


# The fused CPU kernel (backends/gru_cpu.cpp; why it exists is said there). Compiled with
# torch.utils.cpp_extension on first use in a process: about 25 s on a 2-core CPU the first
# time (setup.sh does it), then loaded from the extension cache in well under a second (under
# TORCH_EXTENSIONS_DIR, by default ~/.cache/torch_extensions, a folder per Python and torch
# version). Where it cannot be built (no C++ compiler, no writable cache) the native kernel is
# used, with one warning. LIF_SBI_NATIVE_GRU=1 turns it off.
_CPU_KERNEL_LOCK = threading.Lock()
_cpu_kernel_state: dict = {}


def _cpu_kernel():
    """The compiled fused GRU kernel module, or None where it is turned off or cannot be built."""
    if "module" in _cpu_kernel_state:
        return _cpu_kernel_state["module"]
    with _CPU_KERNEL_LOCK:
        if "module" not in _cpu_kernel_state:
            _cpu_kernel_state["module"] = _build_cpu_kernel()
    return _cpu_kernel_state["module"]


def _build_cpu_kernel():
    if os.environ.get("LIF_SBI_NATIVE_GRU", "") not in ("", "0"):
        return None
    from torch.utils import cpp_extension

    capability = torch.backends.cpu.get_cpu_capability()  # "AVX2", "AVX512", ... or "DEFAULT"
    flags = ["-O3", "-ffast-math"]  # fast-math: glibc's vectorised expf (see gru_cpu.cpp)
    if capability in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma"]
    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gru_cpu.cpp")
    try:
        import ninja  # a dependency; cpp_extension runs `ninja` from PATH, which need not hold the venv

        if ninja.BIN_DIR not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    except ImportError:
        pass
    build_dir = _cpu_kernel_build_dir()
    name = os.path.basename(build_dir)
    try:
        os.makedirs(build_dir, exist_ok=True)
        _remove_stale_build_lock(os.path.join(build_dir, "lock"))
        if not os.path.exists(os.path.join(build_dir, name + ".so")):
            print("lif_sbi: building the fused CPU GRU kernel (once per machine, about 25 s)", file=sys.stderr, flush=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # cpp_extension's notes about compiler versions
            return cpp_extension.load(name, [source], extra_cflags=flags, build_directory=build_dir)
    except Exception as error:  # noqa: BLE001 - any build failure means: use the native kernel
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        warnings.warn(f"lif_sbi: the fused CPU GRU kernel could not be built ({reason}); using PyTorch's native GRU, about 2x slower to train", stacklevel=3)
        return None


def _cpu_kernel_build_dir() -> str:
    """Where the fused kernel is built and cached: per Python and torch version, per CPU capability."""
    from torch.utils import cpp_extension

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
    version = f"lif_sbi_py{sys.version_info.major}{sys.version_info.minor}_torch{torch.__version__}"
    return os.path.join(root, version, f"lif_sbi_gru_cpu_{torch.backends.cpu.get_cpu_capability().lower()}")


def _remove_stale_build_lock(path: str, max_age_s: float = 600.0) -> None:
    """cpp_extension holds a lock file while it builds or loads an extension, and every other
    process waits, silently and without end, while that file exists. A process killed meanwhile
    (SIGKILL, a CI timeout) leaves it behind. A build takes about 25 s and a load well under one,
    so a lock older than `max_age_s` is stale: removed."""
    try:
        if time.time() - os.path.getmtime(path) > max_age_s:
            os.remove(path)
    except FileNotFoundError:
        pass


class _FusedCpuGRU(torch.autograd.Function):
    """One GRU on the fused CPU kernel: inputs x, h0 (1, batch, u) and the PyTorch parameters
    w_ih, w_hh, b_ih, b_hh; outputs (batch, time, u) and (1, batch, u), as `_native_gru`."""

    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh):
        hs, *saved = _cpu_kernel().forward(x, h0[0], w_ih, w_hh, b_ih, b_hh, True)
        ctx.save_for_backward(hs, *saved, w_ih, w_hh)
        return hs[1:].transpose(0, 1), hs[-1:].clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_outputs, grad_last):
        hs, x_tm, r, z, n, hn, w_ih, w_hh = ctx.saved_tensors
        dx, dh0, dw_ih, dw_hh, db_ih, db_hh = _cpu_kernel().backward(
            grad_outputs.contiguous(), grad_last[0].contiguous(), hs, x_tm, r, z, n, hn, w_ih, w_hh
        )
        return dx, dh0.unsqueeze(0), dw_ih, dw_hh, db_ih, db_hh


def _native_gru(x, h0, params, train: bool):
    """One-layer unidirectional batch-first GRU: (batch, time, u) outputs and (1, batch, u) last state."""
    return torch._VF.gru(
        x,
        h0,
        list(params),
        True,  # has_biases
        1,  # num_layers
        0.0,  # dropout (Keras-style input dropout is applied by the caller)
        train,
        False,  # bidirectional
        True,  # batch_first
    )


def _unaliased(results, inputs):
    """`results`, each cloned where it shares memory with an input or an earlier result.

    A custom op's outputs may alias neither its inputs nor each other. An H100 run failed on
    this, most likely because cuDNN's RNN backward returns the weight gradients as views of one
    flat buffer."""
    seen = {t.untyped_storage().data_ptr() for t in inputs}
    out = []
    for r in results:
        ptr = r.untyped_storage().data_ptr()
        if ptr in seen:
            r = r.clone()
            ptr = r.untyped_storage().data_ptr()
        seen.add(ptr)
        out.append(r)
    return out


# The dispatcher runs an op's kernel with the autograd keys excluded (it is "below autograd"), so
# torch.enable_grad() alone records nothing there. This re-admits the autograd keys for the
# duration. (torch.func.vjp also differentiates inside a kernel on the CPU, but it failed on CUDA
# in the first H100 run; the reason was cut off with the log.)
_AUTOGRAD_KEYS = (
    torch._C.DispatchKey.AutogradFunctionality,
    torch._C.DispatchKey.AutogradOther,
    torch._C.DispatchKey.AutogradNestedTensor,
)


@contextlib.contextmanager
def _autograd_inside_op():
    excluded = [torch._C._dispatch_tls_is_dispatch_key_excluded(k) for k in _AUTOGRAD_KEYS]
    try:
        for key in _AUTOGRAD_KEYS:
            torch._C._dispatch_tls_set_dispatch_key_excluded(key, False)
        with torch.enable_grad():
            yield
    finally:
        for key, was in zip(_AUTOGRAD_KEYS, excluded):
            torch._C._dispatch_tls_set_dispatch_key_excluded(key, was)


# Under torch.compile (training.jit_compile = true) the GRU is an opaque custom op. Traced as
# itself, aten::gru is decomposed into one cell per time step: a 501-step unrolled graph that did
# not finish compiling in 10 minutes on the CPU, and that replaces cuDNN's fused kernel on CUDA.
# As an op, inductor calls the native kernel (cuDNN on CUDA) and compiles the rest of the step
# around it, in one graph. No library op does this, hence by hand: the backward op recomputes the
# forward pass and differentiates it with autograd (the eager path's own GRU derivative, cuDNN's
# backward on CUDA), so gradients equal the eager path's.
@torch.library.custom_op("lif_sbi::gru", mutates_args=())
def _compiled_gru(
    x: torch.Tensor, h0: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor, b_hh: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    outputs, h_n = _native_gru(x, h0, (w_ih, w_hh, b_ih, b_hh), True)
    return outputs.contiguous(), h_n.contiguous()  # batch_first outputs are a transposed view


@_compiled_gru.register_fake
def _(x, h0, w_ih, w_hh, b_ih, b_hh):
    batch, time, units = x.shape[0], x.shape[1], w_hh.shape[1]
    return x.new_empty(batch, time, units), x.new_empty(1, batch, units)


@torch.library.custom_op("lif_sbi::gru_backward", mutates_args=())
def _compiled_gru_backward(
    grad_outputs: torch.Tensor,
    grad_h_n: torch.Tensor,
    x: torch.Tensor,
    h0: torch.Tensor,
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    b_ih: torch.Tensor,
    b_hh: torch.Tensor,
) -> list[torch.Tensor]:
    with _autograd_inside_op():
        inputs = [t.detach().requires_grad_() for t in (x, h0, w_ih, w_hh, b_ih, b_hh)]
        outputs, h_n = _native_gru(inputs[0], inputs[1], inputs[2:], True)
        grads = torch.autograd.grad((outputs, h_n), inputs, (grad_outputs, grad_h_n), allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g.contiguous() for g, t in zip(grads, inputs)]
    return _unaliased(grads, (grad_outputs, grad_h_n, x, h0, w_ih, w_hh, b_ih, b_hh))


@_compiled_gru_backward.register_fake
def _(grad_outputs, grad_h_n, *inputs):
    return [torch.empty_like(t, memory_format=torch.contiguous_format) for t in inputs]


def _save_gru_inputs(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _gru_backward(ctx, grad_outputs, grad_h_n):
    x, h0, w_ih, w_hh, b_ih, b_hh = ctx.saved_tensors
    return tuple(_compiled_gru_backward(grad_outputs, grad_h_n, x, h0, w_ih, w_hh, b_ih, b_hh))


_compiled_gru.register_autograd(_gru_backward, setup_context=_save_gru_inputs)


def conv1d(inputs, kernel, *, strides: int, padding: str):
    """1-D convolution in Keras' channels-last layout as a 2-D convolution in torch's channels-last
    memory format.

    inputs: (batch, time, in); kernel: (k, in, out), Keras' Conv1D layout; padding "valid" or
    "same" (Keras' split: the odd pixel on the right). Returns (batch, time', out), no bias.
    Keras' own torch conv transposes to (batch, in, time) and calls conv1d; on the CPU oneDNN's
    channels-last 2-D path is about 1.7x faster for the default network's stack (forward and
    backward; a Keras step of that stack alone: 24 vs 31 ms, `bench/bench_training.py -k
    conv_stack`, bench/RESULTS.md), and (batch, time, in) is already that layout with height 1,
    so the input is not copied.
    """
    x = _as_tensor(inputs)
    w = _as_tensor(kernel)
    k = w.shape[0]
    if padding == "same":
        t = x.shape[1]
        total = max((-(-t // strides) - 1) * strides + k - t, 0)
        if total:
            x = torch.nn.functional.pad(x, (0, 0, total // 2, total - total // 2))
    x4 = x.unsqueeze(1).permute(0, 3, 1, 2)  # (batch, in, 1, time) with NHWC strides: a view
    w4 = w.permute(2, 1, 0).unsqueeze(2).contiguous(memory_format=torch.channels_last)  # (out, in, 1, k)
    y = torch.nn.functional.conv2d(x4, w4, stride=(1, strides))  # (batch, out, 1, time'), NHWC
    return y.permute(0, 2, 3, 1).squeeze(1)  # (batch, time', out)


def compile_inference(approximator) -> None:
    """Run a BayesFlow approximator's flow sampling as traced aten programs, one per batch shape
    (``_TracedSampler``), once a shape has been sampled a few times (on the CPU, batches of up to
    4,096 draws, where Keras' Python is most of the time): the same draws, bit for bit on the
    CPU, without Keras' and BayesFlow's Python around each operation (one recording x 1,000
    draws: 13.1 ms instead of 57.8 ms on the 2-core CPU; bench/RESULTS.md, "Recorded sampling under
    torch and TensorFlow"). Replaces the approximator's ``sampler`` (not saved with the model) unless it is of a
    type other than BayesFlow's default. The summary network stays eager: it runs once per batch
    of recordings, not once per draw batch. (torch.compile would instead add a compilation per
    shape, far longer than a trace.)"""
    if type(getattr(approximator, "sampler", None)) is Sampler:
        approximator.sampler = _TracedSampler()


class _TracedSampler(RecordedSampler):
    """BayesFlow's Sampler with the flow's inverse pass recorded per batch shape (see
    ``_common.RecordedSampler``) as the aten program ``make_fx`` traces on real tensors (its
    result is the call's); replays run under ``no_grad``. The flow's weights are the same tensor
    objects in the trace, so weights loaded or trained later are what a replay uses."""

    def _record(self, inverse, z, conditions):
        from torch.fx.experimental.proxy_tensor import make_fx

        ran = {}

        def run(z, conditions):
            ran["samples"] = inverse(z, conditions)
            return ran["samples"]

        program = make_fx(run, tracing_mode="real")(z, conditions)
        return program, ran["samples"]

    def _run(self, program, z, conditions):
        with torch.no_grad():
            return program(z, conditions)

    def _eager(self, inverse, z, conditions):
        with torch.no_grad():
            return inverse(z, conditions)


def set_seed(seed: int) -> None:
    """Seed Python, NumPy, PyTorch (all devices) and Keras."""
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    seed_keras(seed)


def device_name() -> str:
    """The device Keras computes on: the CUDA card's name, or "CPU"."""
    device = keras.ops.zeros(()).device  # a torch tensor on Keras' default device
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return "CPU"


def prepare_training(model, *, record_steps: bool = True, compile_steps: bool = True) -> None:
    """Before the first training step (``fit`` or ``train_step_function``).

    Eager steps (the model not compiled with ``jit_compile``): Keras' Adam updates the weights
    from three flat buffers (``_adam_on_flat_buffers``: the same numbers, in a few operations
    instead of a few per weight tensor); with ``record_steps``, Keras'
    ``train_function`` and ``test_function`` record each batch shape's step once and replay it
    (``_recorded_steps``: CUDA graphs on a GPU, traced aten programs on the CPU); with
    ``compile_steps`` too, on the CPU a training shape replayed ``_TracedSteps.COMPILE_AFTER``
    times is compiled by inductor from then on.

    ``jit_compile=True``: build the optimizer, give every trainable variable a zero gradient
    buffer, and turn off dynamo's automatic dynamic shapes (for the whole process: later
    torch.compile calls, such as the CUDA simulator's, also compile one static graph per input
    shape). torch.compile guards on the state it traced. The first step otherwise runs with no
    optimizer variables (created inside the traced step: one recompilation per new shape) and with
    ``.grad is None`` (later steps have gradients: a second full compilation, ~40 s on a 2-core
    CPU). The buffers change nothing numerically: each step zeroes the gradients before its
    backward pass.
    """
    if not model.jit_compile:
        _adam_on_flat_buffers(model)
        if record_steps:
            model.train_function = _recorded_steps(model, training=True, compile_steps=compile_steps)
            model.test_function = _recorded_steps(model, training=False)
        return
    # A partial last batch would otherwise make dynamo recompile the step with a symbolic batch
    # size, and Keras' convert_to_tensor breaks the graph on symbolic sizes (half the step then
    # runs eager). Static shapes: one compilation per distinct batch size instead.
    torch._dynamo.config.automatic_dynamic_shapes = False
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    for variable in model.trainable_variables:
        parameter = variable.value  # the torch Parameter behind the Keras variable
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)


def train_step_function(model, *, record_steps: bool = True, compile_steps: bool = True):
    """One optimizer step as ``model.fit`` runs it under torch: eager, recorded once per batch shape
    and replayed (``record_steps``; see ``_RecordedSteps``; on the CPU compiled by inductor once
    replayed ``_TracedSteps.COMPILE_AFTER`` times, with ``compile_steps``), or ``torch.compile`` of
    the whole step where the model was compiled with ``jit_compile=True`` (Keras' torch trainer
    does the same; the first call compiles)."""

    def step(batch):
        return model.train_step(batch)

    if not model.jit_compile:
        _adam_on_flat_buffers(model)
        if record_steps:
            recorded = _recorded_steps(model, training=True, compile_steps=compile_steps)
            return lambda batch: recorded([batch])
        return step
    prepare_training(model)
    return torch.compile(step)


def training_step_kind(model) -> str:
    """How ``fit`` runs the model's training step: "compiled (jit_compile)", "eager", or eager steps
    recorded and replayed (with how many batch shapes were recorded, once it has run); and whether
    Adam updates flat buffers (``_adam_on_flat_buffers``)."""
    steps = getattr(model, "train_function", None)
    kind = steps.describe() if isinstance(steps, _RecordedSteps) else _compiled_or_eager(model)
    if getattr(getattr(model, "optimizer", None), FLAT_ADAM, None) is not None:
        kind += "; Adam on flat buffers"
    return kind


# Adam on flat buffers. Written here because neither Keras nor PyTorch offers it for Keras' Adam:
# Keras' torch Adam updates with ``torch._foreach_*`` operations, which on the CPU (not on CUDA) run one small
# operation per weight tensor (about 2,500 per step of the default network: a fifth of its
# recorded step; bench/RESULTS.md, "Adam on flat buffers"), and PyTorch's fused Adam adds epsilon
# after the bias correction, where Keras adds it before: other numbers.

FLAT_ADAM = "_lif_sbi_flat_buffers"  # the optimizer attribute holding the buffers, once made


def _adam_on_flat_buffers(model) -> None:
    """Make the model's trainable variables and Keras Adam's first and second moments views into
    three flat buffers (one each), and have the optimizer's update run Keras' own formula on the
    buffers whenever it updates every trainable variable (else Keras' per-variable update runs):
    the same float32 operations element by element, so the same weights bit for bit, in eleven
    operations per step. The variables stay Keras' own (the same torch Parameters, now views):
    assignment, saving and loading work as before. Only Keras' Adam (and subclasses that keep its
    update, such as AdamW) without AMSGrad, all variables of one dtype on the CPU; otherwise, or a
    model not built yet, nothing changes (on CUDA, PyTorch's foreach operations are fused kernels
    already, which round some elements differently from these operations)."""
    from keras.src.backend.torch.optimizers.torch_adam import Adam as KerasTorchAdam

    optimizer = getattr(model, "optimizer", None)
    if (optimizer is None or getattr(optimizer, FLAT_ADAM, None) is not None or not isinstance(optimizer, KerasTorchAdam)
            or type(optimizer)._parallel_update_step is not KerasTorchAdam._parallel_update_step or optimizer.amsgrad):
        return
    if not optimizer.built:
        if not model.built or not model.trainable_variables:
            return
        optimizer.build(model.trainable_variables)
    variables = list(optimizer._trainable_variables)
    groups = [[v.value for v in variables],
              [optimizer._momentums[optimizer._get_variable_index(v)].value for v in variables],
              [optimizer._velocities[optimizer._get_variable_index(v)].value for v in variables]]
    if not variables or {(t.dtype, t.device.type) for group in groups for t in group} != {(variables[0].value.dtype, "cpu")}:
        return  # CUDA's foreach operations are fused kernels already (and round differently from these)
    weights, m, v = buffers = [_flat_views(group) for group in groups]
    keys = [id(variable) for variable in variables]
    per_variable = optimizer._parallel_update_step

    def update(grads, trainable_variables, learning_rate):
        if [id(variable) for variable in trainable_variables] != keys:  # a subset (gradients missing)
            return per_variable(grads, trainable_variables, learning_rate)
        # Keras' torch Adam._parallel_update_step, operation for operation, on the flat buffers
        dtype = weights.dtype
        lr = keras.ops.cast(learning_rate, dtype)
        local_step = keras.ops.cast(optimizer.iterations + 1, dtype)
        beta_1, beta_2, epsilon = optimizer.beta_1, optimizer.beta_2, optimizer.epsilon
        beta_1_power = keras.ops.power(keras.ops.cast(beta_1, dtype), local_step)
        beta_2_power = keras.ops.power(keras.ops.cast(beta_2, dtype), local_step)
        alpha = lr * keras.ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        g = torch.cat([grad.reshape(-1) for grad in grads])
        m.mul_(beta_1)
        m.add_(g, alpha=1 - beta_1)
        v.mul_(beta_2)
        v.add_(torch.mul(g, g), alpha=1 - beta_2)
        weights.add_(torch.div(torch.mul(m, alpha), torch.add(torch.sqrt(v), epsilon)), alpha=-1)

    optimizer._parallel_update_step = update
    setattr(optimizer, FLAT_ADAM, buffers)


def _flat_views(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One flat buffer holding ``tensors``' values, each tensor made a view into it (``.data``: the
    same tensor objects, so every holder of them sees the buffer)."""
    flat = torch.empty(sum(t.numel() for t in tensors), dtype=tensors[0].dtype, device=tensors[0].device)
    offset = 0
    with torch.no_grad():
        for t in tensors:
            n = t.numel()
            flat[offset:offset + n].copy_(t.reshape(-1))
            t.data = flat[offset:offset + n].view(t.shape)
            offset += n
    return flat


def _recorded_steps(model, *, training: bool, compile_steps: bool = False) -> _RecordedSteps:
    """The recorder for the device Keras computes on (its default device, or a ``keras.device`` scope);
    ``compile_steps``: on the CPU, compile training shapes replayed often (``_TracedSteps``)."""
    if keras.ops.zeros(()).device.type == "cuda":
        return _CudaGraphSteps(model, training=training)  # a CUDA graph's replay is a few launches already
    return _TracedSteps(model, training=training, compile_steps=compile_steps)


# Recorded eager steps. Written here because neither Keras nor BayesFlow offers it: Keras' torch
# trainer runs the step eagerly or under torch.compile, which first has dynamo trace Keras' and
# BayesFlow's Python (over 100 s for this project's step, bench/RESULTS.md, "torch.compile with
# GRUs"). An eager step is mostly that Python: on an H100 about 65-90 ms against 3-14 ms of GPU
# work; on the 2-core CPU about half of the default network's step. Recording a step costs about
# one eager step; a replay then runs only the recorded PyTorch operations.


class _RecordedSteps:
    """Keras' ``train_function`` (or ``test_function``) for eager torch steps: for each input shape,
    the first ``WARMUP`` steps run eagerly, the next one is recorded (``_record``, by the
    subclass: a CUDA graph, or a traced aten program) while it runs or just before, and every later
    one replays the record on the new batch.

    What makes a replay the same step as an eager one:
    - Every Keras variable (weights, optimizer moments and iteration count, learning rate,
      BayesFlow's standardisation moments, the metrics' totals) is assigned in place (``copy_``), so
      the record reads and writes the variables' own storage: what ``fit``'s callbacks change between
      steps (ReduceLROnPlateau's learning rate, ``reset_metrics``) and weights loaded from a file
      are what the next replay uses.
    - The step is BayesFlow's own ``train_step``/``test_step``, metrics update included, recorded whole.
    - Python numbers that Keras turns into tensors are constants of the record, as they are of a
      ``tf.function`` or ``jax.jit`` trace.
    - Dropout draws from PyTorch's generator at every replay, seeded by ``set_seed``; on a GPU the
      CUDA graph advances it its own way, so the masks differ from an eager step's, as under
      torch.compile (bench/RESULTS.md, "A finding about dropout").
    The last eager step before a shape's recording is watched (``_HostReads``): a step that reads
    a tensor's value into Python is not recorded, since the record would freeze the value read.
    If a shape cannot be recorded (that, or what the subclass finds), its steps stay eager and
    ``describe`` says why; an unexpected CUDA capture failure also warns once.
    """

    WARMUP = 2  # eager steps per input shape before it is recorded
    kind = ""  # what a record is, for ``describe``

    def __init__(self, model, *, training: bool):
        self._model = model
        self._training = training
        self._seen: dict[tuple, int] = {}
        self._records: dict[tuple, object] = {}  # shape key -> the subclass's record
        self._failed: dict[tuple, str] = {}  # shape key -> why it was not recorded

    def describe(self) -> str:
        text = f"eager, recorded once per batch shape and replayed as {self.kind}"
        if self._records or self._failed:
            n = len(self._records)
            text += f" ({n} batch shape{'s' if n != 1 else ''} recorded"
            text += "".join(f"; one not, its steps eager: {why}" for why in sorted(set(self._failed.values()))) + ")"
        return text

    def _step(self, batch):
        if self._training:
            return self._model.train_step(batch)
        with torch.no_grad():  # as Keras' torch trainer runs test steps
            return self._model.test_step(batch)

    def __call__(self, data):
        batch = data[0]  # Keras' trainer passes a one-element sequence holding the batch dict
        if not isinstance(batch, dict) or not all(hasattr(v, "shape") for v in batch.values()):
            return self._step(batch)
        tensors = {k: keras.ops.convert_to_tensor(v) for k, v in batch.items()}
        key = tuple(sorted((k, tuple(t.shape), t.dtype) for k, t in tensors.items()))
        if key in self._records:
            return self._replay(self._records[key], tensors)
        seen = self._seen.get(key, 0)
        if seen < self.WARMUP or key in self._failed:
            self._seen[key] = seen + 1
            if seen == self.WARMUP - 1 and key not in self._failed:
                # the last eager step before the recording, watched for reads of tensor values
                # into Python: a record would freeze the value read (SGD hands PyTorch its learning
                # rate as a Python number), and a CUDA graph capture fails on the synchronisation
                with _HostReads() as reads:
                    outputs = self._eager(tensors)
                if reads.names:
                    self._failed[key] = f"the step reads tensor values into Python ({', '.join(sorted(reads.names))})"
                return outputs
            return self._eager(tensors)
        outputs, record, why_not = self._record(tensors)
        if record is None:
            self._failed[key] = why_not
        else:
            self._records[key] = record
        return outputs

    def _eager(self, tensors):
        return self._step(tensors)

    def _record(self, tensors):
        """Run this batch's step and record it: (the step's metrics, the record or None, why not)."""
        raise NotImplementedError

    def _replay(self, record, tensors):
        raise NotImplementedError


class _CudaGraphSteps(_RecordedSteps):
    """On a CUDA device: the recorded step is a CUDA graph (``torch.cuda.graph``). Warm-up steps run
    on a side stream, as PyTorch's CUDA graph notes ask. A replay copies the batch into the
    captured input buffers and launches the recorded kernels; it returns copies of the metrics, so
    a caller may keep them past the next step. During the capture, Python numbers are made by
    kernels (``_capturable_constants``): a capture cannot copy host memory."""

    kind = "CUDA graphs"

    def __init__(self, model, *, training: bool):
        super().__init__(model, training=training)
        self._side_stream = None

    def _eager(self, tensors):
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream()
        stream = self._side_stream
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            outputs = self._step(tensors)
        torch.cuda.current_stream().wait_stream(stream)
        return outputs

    def _record(self, tensors):
        inputs = {k: t.clone() for k, t in tensors.items()}
        graph = torch.cuda.CUDAGraph()
        try:
            with _capturable_constants(), torch.cuda.graph(graph):
                outputs = self._step(inputs)
        except Exception as exc:  # noqa: BLE001 - any capture error: this shape stays eager, said once
            why = _one_line(exc, 300)
            warnings.warn(f"lif_sbi: CUDA graph capture of the {'training' if self._training else 'validation'} step failed, "
                          f"so steps of this batch shape stay eager ({why})", RuntimeWarning, stacklevel=3)
            torch.cuda.synchronize()
            return self._eager(tensors), None, why
        record = (graph, inputs, outputs)
        return self._replay(record, tensors), record, ""  # the capture recorded the step without running it

    def _replay(self, record, tensors):
        graph, inputs, outputs = record
        for k, t in tensors.items():
            inputs[k].copy_(t)
        graph.replay()
        return {k: v.clone() for k, v in outputs.items()}


class _TracedSteps(_RecordedSteps):
    """On the CPU: the recorded step is the aten program the step ran, traced by ``make_fx``
    (torch.fx, the tracer behind AOTAutograd) on real tensors, forward, backward and optimizer
    update together. The trace runs the step itself; a replay calls the traced operations in
    order, without Keras' and BayesFlow's Python. The Keras variables are the same tensor objects
    in the program, updated in place. Not recorded (the step stays eager): a step with a GRU, whose
    fused CPU kernel and side-by-side threads run outside PyTorch's dispatcher, so a trace would
    see their results as constants, and a step that reads a tensor's value into Python (the value
    would be frozen into the program; the warm-up watch finds most, make_fx refuses the rest, and
    then the variables are restored before the step runs eagerly).

    With ``compile_steps``, a training shape replayed ``COMPILE_AFTER`` times is then compiled:
    ``torch.compile`` of its traced program with inductor (dynamo reads the program's aten calls,
    inductor fuses them into C++ loops), the variables still the program's own tensors, updated in
    place. The same step within float32 round-off, not bit for bit (fused loops sum in another
    order). Dropout keeps PyTorch's generator (``fallback_random``). The first compilation of a
    program costs 20-40 s on a 2-core CPU, ~5 s once inductor's on-disk cache holds it; a
    compilation that fails (no C++ compiler, say) leaves the shape replayed, with a warning.
    Validation steps are not compiled: forward passes only, a few per epoch."""

    kind = "traced aten programs"
    # Replays of a training shape before it is compiled: the default run has ~590 steps of its main
    # shape per epoch, 3,560 in all, each ~10 ms quicker compiled (bench/RESULTS.md, "Recorded
    # steps compiled by inductor"), so compiling after 200 pays; a partial last batch (one per
    # epoch) and the `ci` configuration (8 steps per epoch) never get there.
    COMPILE_AFTER = 200

    def __init__(self, model, *, training: bool, compile_steps: bool = False):
        super().__init__(model, training=training)
        self._compile = compile_steps and training
        self._replays: dict[int, int] = {}  # id(program) -> replays so far
        self._compiled: dict[int, object] = {}  # id(program) -> its compiled program, or None where compiling failed
        self._compile_notes: list[str] = []  # for describe

    def describe(self) -> str:
        text = super().describe()
        return text + "".join(f"; {note}" for note in self._compile_notes)

    def _snapshot(self):
        """Copies of every Keras variable's value and of PyTorch's random state, and a function that
        puts them back (after a trace or a compiled call that stopped half-way)."""
        variables = list({id(v): v for v in (*self._model.variables, *self._model.optimizer.variables,
                                             *self._model.metrics_variables)}.values())
        saved = [v.value.detach().clone() for v in variables]
        rng = torch.get_rng_state()

        def restore():
            with torch.no_grad():
                for variable, value in zip(variables, saved):
                    variable.value.copy_(value)
            torch.set_rng_state(rng)

        return restore

    def _record(self, tensors):
        from torch.fx.experimental.proxy_tensor import make_fx

        keys = sorted(tensors)
        ran = {}

        def step(*values):
            ran["outputs"] = self._step(dict(zip(keys, values)))
            return ran["outputs"]

        # A trace that stops half-way (an operation make_fx refuses, such as reading a traced value
        # into Python where the warm-up step did not) has already run part of the step for real:
        # put every variable and the random state back, then run the step eagerly.
        restore = self._snapshot()
        calls = _CPU_GRU_CALLS["n"]
        try:
            program = make_fx(step, tracing_mode="real")(*[tensors[k] for k in keys])
        except Exception as exc:  # noqa: BLE001 - whatever stops the trace: this shape stays eager
            restore()
            return self._eager(tensors), None, f"the step cannot be traced ({_one_line(exc, 160)})"
        outputs = {k: v.detach() for k, v in ran["outputs"].items()}
        if _CPU_GRU_CALLS["n"] != calls:
            return outputs, None, "a GRU on the CPU runs outside PyTorch's dispatcher"
        return outputs, (program, keys), ""  # (a host read would have stopped make_fx: it refuses them)

    def _replay(self, record, tensors):
        program, keys = record
        args = [tensors[k] for k in keys]
        if self._compile and id(program) not in self._compiled:
            self._replays[id(program)] = self._replays.get(id(program), 0) + 1
            if self._replays[id(program)] > self.COMPILE_AFTER:
                return self._compile_and_run(program, args)
        compiled = self._compiled.get(id(program))
        with torch.no_grad():
            return (program if compiled is None else compiled)(*args)

    def _compile_and_run(self, program, args):
        """Compile ``program`` (torch.compile is lazy: its first call compiles, then runs this step)
        and keep it for this shape; where that fails, put the variables back, warn, and replay."""
        restore = self._snapshot()
        t0 = time.perf_counter()
        compiled = torch.compile(program, backend="inductor", fullgraph=True, dynamic=False, options={"fallback_random": True})
        try:
            with torch.no_grad():
                outputs = compiled(*args)
        except Exception as exc:  # noqa: BLE001 - whatever stops the compilation: this shape is replayed
            restore()
            self._compiled[id(program)] = None
            why = _one_line(exc, 200)
            self._compile_notes.append(f"compiling one failed, replayed instead ({why})")
            warnings.warn(f"lif_sbi: compiling a recorded training step with inductor failed; its steps are replayed "
                          f"uncompiled ({why})", RuntimeWarning, stacklevel=2)
            with torch.no_grad():
                return program(*args)
        self._compiled[id(program)] = compiled
        self._compile_notes.append(f"one compiled by inductor after {self.COMPILE_AFTER} replays "
                                   f"({time.perf_counter() - t0:.1f} s, its first step included)")
        return outputs


def _one_line(exc: Exception, limit: int) -> str:
    """An exception as one line for a warning or the run's report: its type, then at most ``limit``
    characters of its message with the whitespace collapsed."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:limit]}"


class _HostReads(TorchDispatchMode):
    """While active on this thread: the names of the operations that read a tensor's value into
    Python (``.item()``, ``bool(t)``, ``nonzero``...), in ``names``."""

    OPS = {"aten._local_scalar_dense.default", "aten.item.default", "aten.is_nonzero.default", "aten.equal.default",
           "aten.nonzero.default"}

    def __init__(self):
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) in self.OPS:
            self.names.add(str(func))
        return func(*args, **(kwargs or {}))


# Counts GRU calls on the CPU, which _TracedSteps cannot record (see there).
_CPU_GRU_CALLS = {"n": 0}


MAX_CONSTANT_SIZE = 64  # numbers per host constant made by kernels during a capture (shapes are a few)


@contextlib.contextmanager
def _capturable_constants():
    """While a CUDA graph is captured: ``torch.as_tensor`` of a Python number or a short sequence of
    them (how Keras' ``convert_to_tensor`` makes tensors of constants and of shapes) is made by
    ``torch.full`` kernels, which a graph can record, instead of a host-to-device copy, which it
    cannot; larger host arrays raise a clear error.
    Process-wide while it lasts (the capture runs on this thread; nothing else should then run)."""
    as_tensor = torch.as_tensor

    def capturable_as_tensor(data, dtype=None, device=None):
        if isinstance(data, torch.Tensor):
            return as_tensor(data, dtype=dtype, device=device)
        array = np.asarray(data)
        if array.dtype.kind not in "biuf" or array.size > MAX_CONSTANT_SIZE:
            raise RuntimeError(f"a step captured as a CUDA graph made a tensor from host data ({type(data).__name__} of "
                               f"{array.dtype} {array.shape}); only numbers and up to {MAX_CONSTANT_SIZE} of them can be recorded")
        if dtype is None:  # torch.as_tensor's inference: Python floats get the default dtype, NumPy keeps its own
            dtype = torch.from_numpy(array).dtype if isinstance(data, (np.ndarray, np.generic)) else (
                torch.bool if array.dtype.kind == "b" else torch.int64 if array.dtype.kind in "iu" else torch.get_default_dtype())
        values = [torch.full((), value, dtype=dtype, device=device) for value in array.ravel().tolist()]
        return torch.stack(values).reshape(array.shape) if values else torch.empty(array.shape, dtype=dtype, device=device)

    torch.as_tensor = capturable_as_tensor
    try:
        yield
    finally:
        torch.as_tensor = as_tensor
