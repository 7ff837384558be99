"""The fused CPU GRU kernel (``gru_cpu.cpp``, next to this module) built and loaded on first use.

Why the kernel exists is said in ``gru_cpu.cpp``. It is compiled with torch.utils.cpp_extension
on first use in a process: about 25 s on a 2-core CPU the first time (setup.sh does it), then
loaded from the extension cache in well under a second (under TORCH_EXTENSIONS_DIR, by default
~/.cache/torch_extensions, a folder per Python and torch version). Where it cannot be built (no
C++ compiler, no writable cache) the GRU runs on PyTorch's native kernel, with one warning.
LIF_SBI_NATIVE_GRU=1 turns it off.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import warnings

import torch


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
