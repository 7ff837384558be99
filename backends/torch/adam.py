"""Keras' Adam on flat buffers: the same update, bit for bit, in a few operations per step on the CPU.

Written here because neither Keras nor PyTorch offers it for Keras' Adam: Keras' torch Adam
updates with ``torch._foreach_*`` operations, which on the CPU (not on CUDA) run one small
operation per weight tensor (about 2,500 per step of the default network: a fifth of its
recorded step; bench/RESULTS.md, "Adam on flat buffers"), and PyTorch's fused Adam adds epsilon
after the bias correction, where Keras adds it before: other numbers.
"""

from __future__ import annotations

import keras
import torch

FLAT_ADAM = "_lif_sbi_flat_buffers"  # the optimizer attribute holding the buffers, once made


def _adam_on_flat_buffers(model) -> None:
    """Make the model's trainable variables and Keras Adam's first and second moments views into
    three flat buffers (one each), and have the optimizer's update run Keras' own formula on the
    buffers whenever it updates every trainable variable (else Keras' per-variable update runs):
    the same float32 operations element by element, so the same weights bit for bit, in eleven
    operations per step. The variables stay Keras' own (the same torch Parameters, made views):
    assignment, saving and loading work as they do without the buffers. Only Keras' Adam (and subclasses that keep its
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
