"""PyTorch backend: the interface of ``lif_sbi.backends`` (see there for the contract) on PyTorch.

The modules, by concern: ``gru_ops`` runs the GRU on this project's fused C++ CPU kernel
(``gru_cpu.cpp``, built and loaded by ``gru_kernel``) or PyTorch's native one, independent GRUs
side by side on threads, and the GRU as one opaque op under torch.compile; ``conv`` runs conv1d as
a channels-last 2-D convolution; ``steps`` records eager training and validation steps once per
batch shape and replays them (CUDA graphs on a GPU, traced aten programs on the CPU, compiled by
inductor once replayed often); ``adam`` runs Keras' Adam on flat buffers; ``sampler`` records the
flow's sampling; ``dispatch`` holds what those recordings watch at PyTorch's dispatcher. Importing
the package turns on flush-to-zero for denormal floats, process-wide (see below).
"""

from __future__ import annotations

import random
import warnings

import keras
import numpy as np
import torch

from .._common import seed_keras
from .adam import FLAT_ADAM
from .conv import conv1d
from .gru_ops import gru, gru_many
from .sampler import compile_inference
from .steps import prepare_training, train_step_function, training_state, training_step_kind

__all__ = ["name", "gru", "gru_many", "conv1d", "set_seed", "device_name", "train_step_function", "prepare_training",
           "training_state", "training_step_kind", "compile_inference", "FLAT_ADAM"]

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
