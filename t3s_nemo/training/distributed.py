"""torch.distributed and megatron-core parallel state, from torchrun's or Slurm's environment."""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from t3s_nemo.devices import install_cpu_mode


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank): torchrun's variables, else Slurm's (srun), else one process."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in os.environ and "SLURM_NTASKS" in os.environ:
        # srun with one task per GPU: the sbatch script exports MASTER_ADDR/MASTER_PORT
        return int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"]), int(os.environ.get("SLURM_LOCALID", 0))
    return 0, 1, 0


def init_distributed(timeout_minutes: int = 30) -> DistEnv:
    """Start the process group (nccl on GPU, gloo with the CPU mode otherwise). Idempotent."""
    rank, world, local = read_env()
    cuda = torch.cuda.is_available()
    if not cuda:
        install_cpu_mode()
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        if "MASTER_PORT" not in os.environ:
            if world > 1:
                raise RuntimeError("MASTER_PORT is not set for a multi-process run (launch with torchrun or srun)")
            os.environ["MASTER_PORT"] = str(_free_port())
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(
            backend="nccl" if cuda else "gloo",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
    return DistEnv(rank=rank, world_size=world, local_rank=local, backend=dist.get_backend())


def init_model_parallel(parallel) -> None:
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    ps.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tp,
        pipeline_model_parallel_size=parallel.pp,
        virtual_pipeline_model_parallel_size=parallel.vpp,
        context_parallel_size=parallel.cp,
        expert_model_parallel_size=getattr(parallel, "ep", 1),
    )


def shutdown() -> None:
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
