"""PyTorch backend: the GRU runs on PyTorch's native kernel (``torch._VF.gru``).

Keras' own torch GRU uses the native kernel only on CUDA; on the CPU it falls back to a Python
loop over time steps whose backward pass is quadratic in the sequence length (about 15 s per
training step for the reference network). Here the Keras weights are permuted from Keras' gate
order (z, r, h) to PyTorch's (r, z, n) and transposed with differentiable ops, so gradients flow
back to the Keras variables. PyTorch's n-gate, n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),
is Keras' ``reset_after=True`` formula. Under torch.compile (``training.jit_compile = true``)
the same kernel is called as one opaque custom op, ``lif_sbi::gru`` (see below). Importing this
module turns on flush-to-zero for denormal floats (see below).
"""

from __future__ import annotations

import contextlib
import random
import warnings

import keras
import numpy as np
import torch

from ._common import seed_keras

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


def gru(inputs, kernel, recurrent_kernel, bias, *, return_sequences: bool, initial_state=None):
    """GRU forward (Keras reset_after=True layout) on PyTorch's native kernel.

    inputs: (batch, time, in); kernel: (in, 3u); recurrent_kernel: (u, 3u); bias: (2, 3u).
    Returns (batch, time, u) if return_sequences else the last state (batch, u).
    """
    kernel = _as_tensor(kernel)
    recurrent_kernel = _as_tensor(recurrent_kernel)
    bias = _as_tensor(bias)
    x = _as_tensor(inputs).to(dtype=kernel.dtype)
    units = recurrent_kernel.shape[0]
    if initial_state is None:
        h0 = torch.zeros(1, x.shape[0], units, dtype=x.dtype, device=x.device)
    else:
        h0 = _as_tensor(initial_state).to(dtype=x.dtype).unsqueeze(0)
    params = _torch_params(kernel, recurrent_kernel, bias)
    if torch.compiler.is_compiling():
        outputs, h_n = _compiled_gru(x.contiguous(), h0.contiguous(), *params)
    else:
        outputs, h_n = _native_gru(x.contiguous(), h0.contiguous(), params, torch.is_grad_enabled())
    return outputs if return_sequences else h_n[0]


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


def prepare_training(model) -> None:
    """Before the first training step of a model compiled with ``jit_compile=True``: build the
    optimizer, give every trainable variable a zero gradient buffer, and turn off dynamo's
    automatic dynamic shapes (for the whole process: later torch.compile calls, such as the CUDA
    simulator's, also compile one static graph per input shape).

    torch.compile guards on the state it traced. The first step otherwise runs with no optimizer
    variables (created inside the traced step: one recompilation per new shape) and with
    ``.grad is None`` (later steps have gradients: a second full compilation, ~40 s on a 2-core
    CPU). The buffers change nothing numerically: each step zeroes the gradients before its
    backward pass. Eager steps need none of this.
    """
    if not model.jit_compile:
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


def train_step_function(model):
    """One optimizer step as ``model.fit`` runs it under torch: eager, or ``torch.compile`` of the
    whole step where the model was compiled with ``jit_compile=True`` (Keras' torch trainer does
    the same; the first call compiles)."""

    def step(batch):
        return model.train_step(batch)

    if not model.jit_compile:
        return step
    prepare_training(model)
    return torch.compile(step)
