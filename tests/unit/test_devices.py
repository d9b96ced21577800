"""The CPU mode must not grow the process: megatron's RNG tracker sets the "CUDA" RNG state on every
fork (each layer, each micro-batch), which torch queues forever when CUDA is never initialised."""

import subprocess
import sys

import pytest
import torch

SCRIPT = """
import torch
{first}
{second}
from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

tracker = get_cuda_rng_tracker()
tracker.add("t3s-test", 1234)
before = len(torch.cuda._queued_calls)
for _ in range(200):
    with tracker.fork("t3s-test"):
        torch.rand(4)
print("QUEUED", len(torch.cuda._queued_calls) - before)
"""
INSTALL = "from t3s_nemo.devices import install_cpu_mode; assert install_cpu_mode()"
IMPORT_MEGATRON = "import megatron.core.tensor_parallel.random"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU mode is installed only without CUDA")
@pytest.mark.parametrize("order", ["cpu-mode-first", "megatron-first"])
def test_rng_tracker_forks_queue_nothing(order):
    first, second = (INSTALL, IMPORT_MEGATRON) if order == "cpu-mode-first" else (IMPORT_MEGATRON, INSTALL)
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(first=first, second=second)],
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "T3S_CPU_MODE": "0"})
    assert out.returncode == 0, out.stderr
    queued = [line for line in out.stdout.splitlines() if line.startswith("QUEUED")]
    assert queued == ["QUEUED 0"], out.stdout + out.stderr
