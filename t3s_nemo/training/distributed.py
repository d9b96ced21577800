"""torch.distributed and megatron-core parallel state, from torchrun's or Slurm's environment."""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from t3s_nemo.devices import install_cpu_mode
from t3s_nemo.errors import T3SError


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
    if "SLURM_PROCID" in os.environ and "SLURM_NTASKS" in os.environ and "SLURM_STEP_ID" in os.environ:
        # srun with one task per GPU: the sbatch script exports MASTER_ADDR/MASTER_PORT. The batch script
        # itself (no SLURM_STEP_ID) is one process, whatever the job's task count: rank 0 of N would wait
        # for N - 1 ranks that nothing starts
        return int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"]), int(os.environ.get("SLURM_LOCALID", 0))
    return 0, 1, 0


_LONG_WAIT = None  # the gloo group of long_barrier
LONG_WAIT_HOURS = 12


def _device_index(local: int) -> int:
    """This process's GPU: its local rank, or 0 where srun binds one GPU to each task (--gpus-per-task=1
    shows a task only its own). More processes than GPUs is an error, not several ranks on one GPU."""
    count = torch.cuda.device_count()
    if local < count:
        return local
    if count == 1 and "LOCAL_RANK" not in os.environ and "SLURM_LOCALID" in os.environ:
        return 0
    raise T3SError(f"local rank {local}, but {count} GPU(s) visible to it: start at most {count} process(es) per "
                   "node (--nproc-per-node, srun --ntasks-per-node, or generation.tp for sampling)")


def one_kernel_queue_for_overlap(parallel) -> None:
    """CUDA_DEVICE_MAX_CONNECTIONS=1 under TP or CP, set before the CUDA context exists, as Megatron-LM
    requires up to Hopper: megatron-core's TP/SP layers and CP attention launch their communication ahead
    of the GEMM it overlaps, an order that only one hardware queue keeps (megatron-core warns without
    it). Blackwell no longer needs it, and loses little with it. A value the user exported is kept."""
    if parallel.tp > 1 or parallel.cp > 1:
        os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")


def init_distributed(timeout_minutes: int = 30) -> DistEnv:
    """Start the process group (nccl on GPU, gloo with the CPU mode otherwise). Idempotent."""
    global _LONG_WAIT
    rank, world, local = read_env()
    cuda = torch.cuda.is_available()
    if not cuda:
        install_cpu_mode()
    if not dist.is_initialized():
        if world > 1 and not ("MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ):
            # srun without them would wait forever on 127.0.0.1 (on a single node, the wrong port)
            raise T3SError(f"{world} processes but no MASTER_ADDR/MASTER_PORT: launch with torchrun, or under "
                           "srun from a script that exports them (slurm/*.sbatch do: docs/cluster.md)")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        if "MASTER_PORT" not in os.environ:
            os.environ["MASTER_PORT"] = str(_free_port())
        if cuda:
            torch.cuda.set_device(_device_index(local))
        dist.init_process_group(
            backend="nccl" if cuda else "gloo",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
    if _LONG_WAIT is None and dist.get_world_size() > 1:  # made now, while every rank is here (long_barrier)
        _LONG_WAIT = dist.new_group(backend="gloo", timeout=datetime.timedelta(hours=LONG_WAIT_HOURS))
    return DistEnv(rank=rank, world_size=world, local_rank=local, backend=dist.get_backend())


def long_barrier() -> None:
    """Wait for work rank 0 does alone (packing data.input, converting a Hugging Face model.init).

    On the default group the waiting ranks would give up after its timeout (30 minutes; NCCL's watchdog
    then ends them), and packing 100k long traces or converting a 32B model can take longer. This waits
    on a gloo group of its own with a long timeout, on the CPU; a rank that dies still ends the wait at
    once (gloo sees its connection close). Every rank must call it at the same points.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    dist.barrier(group=_LONG_WAIT)


def rank0_says(compute):
    """compute() on rank 0, its result (or its T3SError, raised) on every rank. For what each rank would
    otherwise read off a shared file system on its own (the latest complete checkpoint): one whose
    attribute cache lags (NFS) could make the ranks disagree, and load different steps or build
    different vocabularies. A user error on rank 0 ends every rank, not only rank 0."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return compute()
    box = [None]
    if dist.get_rank() == 0:
        try:
            box = [("ok", compute())]
        except T3SError as e:
            box = [("error", str(e))]
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise T3SError(value)
    return value


def collective_device() -> torch.device:
    """Where tensors for torch.distributed collectives of the default process group must live: NCCL
    reduces only CUDA tensors (a CPU tensor raises "No backend type associated with device type cpu")."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


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

    global _LONG_WAIT
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
    _LONG_WAIT = None
