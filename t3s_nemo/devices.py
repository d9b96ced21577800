"""Device choice, and the CPU mode that lets megatron-core's real code run without CUDA.

megatron-core is GPU-first: it calls torch.cuda.current_device(), seeds a CUDA RNG tracker, creates
tensors with device="cuda" inside the pipeline schedules and checks `param.type()` for the
'torch.cuda.' prefix in its optimizers. The CPU mode patches those few CUDA entry points to CPU
equivalents and enters a TorchFunctionMode that maps every cuda device argument to cpu. It is installed
only when CUDA is absent, in every thread (function modes are per thread) and in every process started
from here (through the T3S_CPU_MODE environment variable read by `t3s_nemo/__init__.py`).
"""

from __future__ import annotations

import contextlib
import os
import threading

import torch
from torch.overrides import TorchFunctionMode

CPU = torch.device("cpu")
_installed = False


def _to_cpu(device):
    if isinstance(device, str) and device.startswith("cuda"):
        return CPU
    if isinstance(device, torch.device) and device.type == "cuda":
        return CPU
    if isinstance(device, int) and not isinstance(device, bool):  # torch.cuda.current_device() style
        return CPU
    return device


class CudaToCpu(TorchFunctionMode):
    """Maps device='cuda' (and integer device indices) to cpu; Tensor.cuda() becomes a no-op."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if "device" in kwargs:
            kwargs = dict(kwargs, device=_to_cpu(kwargs["device"]))
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            # megatron's optimizers compare param.type() with 'torch.cuda.FloatTensor'
            name = func(*args)
            if name.startswith("torch.") and not name.startswith("torch.cuda."):
                return "torch.cuda." + name[len("torch."):]
            return name
        if func is torch.Tensor.to and len(args) > 1 and not isinstance(args[1], (torch.dtype, torch.Tensor)):
            args = (args[0], _to_cpu(args[1]), *args[2:])
        return func(*args, **kwargs)


class _NullStream:
    """Stands in for torch.cuda.Stream: CPU work is synchronous, so every stream operation is a no-op."""

    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, *args, **kwargs):
        pass

    def wait_event(self, *args, **kwargs):
        pass

    def record_event(self, *args, **kwargs):
        return None

    def synchronize(self):
        pass

    def query(self):
        return True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _CpuEvent:
    """Stands in for torch.cuda.Event: a host timestamp taken when recorded (CPU work is synchronous)."""

    def __init__(self, *args, **kwargs):
        self.t = None

    def record(self, stream=None):
        import time

        self.t = time.perf_counter()

    def synchronize(self):
        pass

    def wait(self, stream=None):
        pass

    def query(self):
        return True

    def elapsed_time(self, end) -> float:
        return (end.t - self.t) * 1000.0  # milliseconds, as CUDA events report


def _patch_thread_start() -> None:
    """Enter the function mode in every thread started after this (megatron's async writers, loaders)."""
    original = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]

    def _bootstrap_inner(self):
        with CudaToCpu():
            original(self)

    threading.Thread._bootstrap_inner = _bootstrap_inner  # type: ignore[attr-defined]


def _drop_lazy_cuda_calls() -> None:
    import sys

    def _lazy_call(callable, **kwargs):  # noqa: A002 - torch's signature
        return None

    torch.cuda._lazy_call = _lazy_call
    # modules that imported the name before the CPU mode was installed keep their own reference
    for name in ("megatron.core.tensor_parallel.random", "megatron.core.distributed.fsdp.src.megatron_fsdp.utils"):
        mod = sys.modules.get(name)
        if mod is not None and hasattr(mod, "_lazy_call"):
            mod._lazy_call = _lazy_call


def install_cpu_mode() -> bool:
    """Install the CPU mode when CUDA is absent (idempotent). Returns whether it is active."""
    global _installed
    if _installed:
        return True
    if torch.cuda.is_available():
        return False
    import torch.cuda.random as cuda_random

    torch.cuda.current_device = lambda: CPU
    for mod in (torch.cuda, cuda_random):
        mod.get_rng_state = lambda device=None: torch.get_rng_state()
        mod.set_rng_state = lambda state, device=None: torch.set_rng_state(state)
        # megatron seeds the CUDA generator with a per-rank offset; the CPU generator is seeded by the
        # recipe (train.seed), so seeding "CUDA" must not reseed it behind the recipe's back.
        mod.manual_seed = lambda seed: None
        mod.manual_seed_all = lambda seed: None
    # megatron's RNG tracker sets the "CUDA" RNG state through torch.cuda._lazy_call, which, with CUDA
    # never initialised, queues the call with a formatted stack in torch.cuda._queued_calls forever: on
    # CPU that grew a process by ~25 MB per training step (13 GB over the demo). There is no CUDA
    # generator to set here, so the call is dropped (as the queued ones were never run); the tracker's
    # states are read from the CPU generator (get_rng_state above).
    _drop_lazy_cuda_calls()
    torch.cuda.synchronize = lambda device=None: None
    torch.cuda.current_stream = lambda device=None: _NullStream()
    torch.cuda.default_stream = lambda device=None: _NullStream()
    torch.cuda.Stream = _NullStream
    torch.cuda.Event = _CpuEvent
    torch.cuda.stream = lambda stream=None: contextlib.nullcontext()
    torch.cuda.device_count = lambda: 0
    torch.cuda.empty_cache = lambda: None
    CudaToCpu().__enter__()  # the main thread, for the life of the process
    _patch_thread_start()
    os.environ["T3S_CPU_MODE"] = "1"  # processes started from here install it on import
    _installed = True
    return True


def cpu_mode_active() -> bool:
    return _installed


def device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() and not _installed else CPU


def te_available() -> bool:
    """Transformer Engine imports (GPU machines with the `gpu` extra or an NGC container)."""
    if not torch.cuda.is_available():
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:
        return False
    return True
