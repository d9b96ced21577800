"""T3S (Training-Trajectory-Aware Token Selection) on megatron-core."""

import logging
import os
import warnings

__version__ = "0.1.0"

# megatron-core warns on every import that Transformer Engine/apex are absent (expected on CPU, and the
# `gpu` extra is how to get them) and that it cannot find a rank before torch.distributed starts; torch
# logs that CUDA is absent. Users read our own lines about devices instead.
warnings.filterwarnings("ignore", message=r".*Transformer Engine and Apex are not installed.*")
warnings.filterwarnings("ignore", message=r".*Could not determine rank.*")
warnings.filterwarnings("ignore", message=r".*is deprecated.*HybridModel.*")
warnings.filterwarnings("ignore", message=r".*\.grad attribute of a Tensor that is not a leaf.*")
warnings.filterwarnings("ignore", message=r".*torch.distributed.(reduce_scatter_tensor|all_gather_into_tensor). is deprecated.*")
warnings.filterwarnings("ignore", message=r".*(Apex is not installed|MimoModelConfig is experimental|full scope is deprecated).*")
# torch.distributed.checkpoint says so whenever it reads a checkpoint in one process without a process
# group (snapshot export, RRT, consolidation do that on purpose), and megatron-core's sharded tensors
# still go through torch's ShardedTensor; neither is anything a user can act on.
warnings.filterwarnings("ignore", message=r".*torch.distributed is disabled, unavailable or uninitialized.*")
warnings.filterwarnings("ignore", message=r".*The argument order of load has been changed.*")
warnings.filterwarnings("ignore", message=r".*deprecating ShardedTensor.*")
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


class _DropKnownNoise(logging.Filter):
    """megatron-core logs these on every run; none is actionable for a t3s user."""

    NOISE = ("GPTModel IS DEPRECATED", "full_param_layout not provided", "MCore's async save is deprecated")

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(n in msg for n in self.NOISE)


for _name in ("megatron.core.models.gpt.gpt_model", "megatron.core.distributed.distributed_data_parallel",
              "megatron.core.dist_checkpointing.strategies.torch", "megatron.core.utils"):
    logging.getLogger(_name).addFilter(_DropKnownNoise())

# Worker processes that megatron-core starts (checkpoint writers, spawned data workers) import this
# package before anything else runs in them; the recipe that enabled the CPU mode marks it in the
# environment so those children get it too.
if os.environ.get("T3S_CPU_MODE") == "1":
    from t3s_nemo.devices import install_cpu_mode

    install_cpu_mode()
