"""The GRU under torch: on the fused CPU kernel or PyTorch's native one (``torch._VF.gru``).

Keras' own torch GRU uses the native kernel only on CUDA; on the CPU it falls back to a Python
loop over time steps whose backward pass is quadratic in the sequence length (about 15 s per
training step for the reference network). Here the Keras weights are permuted from Keras' gate
order (z, r, h) to PyTorch's (r, z, n) and transposed with differentiable ops, so gradients flow
back to the Keras variables. PyTorch's n-gate, n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),
is Keras' ``reset_after=True`` formula. On the CPU in float32, eager, the GRU runs on this
project's own kernel (``gru_cpu.cpp``, built on first use by ``gru_kernel``), which trains in
about half the native kernel's time; elsewhere on the native kernel. Under torch.compile
(``training.jit_compile = true``) the native kernel is called as one opaque custom op,
``lif_sbi::gru`` (see below). Independent GRUs (``gru_many``) run side by side on the CPU, one
Python thread each.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

import torch

from .dispatch import _CPU_GRU_CALLS, _as_tensor
from .gru_kernel import _cpu_kernel


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
    """GRU forward (Keras reset_after=True layout) on the fused CPU kernel or PyTorch's native one.

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
        # tensors, where PyTorch's GRU is decomposed into Python time step by time step. Returning
        # empty tensors of the right shapes loads a reference-network model in 1.9-2.1 s instead of
        # 3.7-3.9 s (bench/inference_compile.py's load_s, 2-core CPU). Shapes only.
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

    A custom op's outputs may alias neither its inputs nor each other, and torch checks this when
    the op runs. On CUDA, cuDNN's RNN backward can return the weight gradients as views of one
    flat buffer (the likely cause of that check failing on an H100)."""
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
# duration. (torch.func.vjp also differentiates inside a kernel on the CPU, but not on CUDA: it
# fails there on an H100.)
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
# itself, aten::gru is decomposed into one cell per time step: a 501-step unrolled graph that does
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
