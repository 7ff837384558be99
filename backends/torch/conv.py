"""conv1d under torch: a 1-D convolution in Keras' layout as a channels-last 2-D convolution."""

from __future__ import annotations

import torch

from .dispatch import _as_tensor


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
