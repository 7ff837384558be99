"""Where Python values meet PyTorch's dispatcher: what the recorded steps watch and patch there.

Keras values as torch tensors (``_as_tensor``), reads of tensor values into Python watched
(``_HostReads``), Python numbers made by kernels while a CUDA graph is captured
(``_capturable_constants``), and a count of the GRU calls that run outside the dispatcher
(``_CPU_GRU_CALLS``). The recorded steps (``steps``) rely on the last three.
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode


def _as_tensor(x):
    # keras.ops.convert_to_tensor unwraps a Keras Variable to its torch Parameter (keeps the
    # autograd connection) and moves NumPy input to the default device.
    return keras.ops.convert_to_tensor(x)


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


# GRU calls on the CPU (counted by gru_ops._eager_gru), which steps._TracedSteps cannot record (see there).
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
