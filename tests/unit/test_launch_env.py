"""Starting the process group from torchrun's or srun's environment."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
START = "from t3s_nemo.console import exit_on_user_error\nfrom t3s_nemo.training.distributed import init_distributed\n" \
        "exit_on_user_error(init_distributed)"


def _start(**env):
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT") and not k.startswith("SLURM_")}
    return subprocess.run([sys.executable, "-c", START], env={**base, **env}, capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def test_srun_tasks_without_a_rendezvous_address_are_one_clear_error():
    # rank 0 of 2 srun tasks would otherwise wait forever for a peer on 127.0.0.1
    p = _start(SLURM_PROCID="0", SLURM_NTASKS="2", SLURM_LOCALID="0", SLURM_STEP_ID="0")
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "2 processes but no MASTER_ADDR/MASTER_PORT" in p.stderr


def test_one_process_needs_no_rendezvous_address():
    assert _start().returncode == 0
    # the batch script of a 2-task job (no job step: Slurm sets no SLURM_STEP_ID there) is one process
    p = _start(SLURM_PROCID="0", SLURM_NTASKS="2", SLURM_LOCALID="0", SLURM_JOB_ID="7")
    assert p.returncode == 0, p.stderr


def test_each_process_gets_its_own_gpu_or_a_clear_error(monkeypatch):
    # the device choice alone, for a machine with a given number of visible GPUs (none here)
    import pytest
    import torch

    from t3s_nemo.errors import T3SError
    from t3s_nemo.training.distributed import _device_index

    for k in ("LOCAL_RANK", "SLURM_LOCALID"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert [_device_index(i) for i in range(8)] == list(range(8))
    with pytest.raises(T3SError, match="local rank 8, but 8 GPU"):
        _device_index(8)
    # srun --gpus-per-task=1: each task sees one GPU, whatever its local id
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("SLURM_LOCALID", "5")
    assert _device_index(5) == 0
    # torchrun with more processes than GPUs would pile them onto one
    monkeypatch.setenv("LOCAL_RANK", "5")
    with pytest.raises(T3SError, match="start at most 1 process"):
        _device_index(5)


def test_tensor_or_context_parallel_runs_get_one_cuda_kernel_queue(monkeypatch):
    # megatron-core's TP/CP overlap needs CUDA_DEVICE_MAX_CONNECTIONS=1 (Megatron-LM asserts it up to Hopper)
    from types import SimpleNamespace

    from t3s_nemo.training.distributed import one_kernel_queue_for_overlap

    monkeypatch.delenv("CUDA_DEVICE_MAX_CONNECTIONS", raising=False)
    one_kernel_queue_for_overlap(SimpleNamespace(tp=1, cp=1))
    assert "CUDA_DEVICE_MAX_CONNECTIONS" not in os.environ
    for tp, cp in ((2, 1), (1, 2)):
        monkeypatch.delenv("CUDA_DEVICE_MAX_CONNECTIONS", raising=False)
        one_kernel_queue_for_overlap(SimpleNamespace(tp=tp, cp=cp))
        assert os.environ["CUDA_DEVICE_MAX_CONNECTIONS"] == "1"
    monkeypatch.setenv("CUDA_DEVICE_MAX_CONNECTIONS", "8")  # the user's own choice stays
    one_kernel_queue_for_overlap(SimpleNamespace(tp=2, cp=1))
    assert os.environ["CUDA_DEVICE_MAX_CONNECTIONS"] == "8"
