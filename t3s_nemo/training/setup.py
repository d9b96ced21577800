"""Building the pieces of a run: model chunks, megatron DDP, distributed optimizer, LR schedule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from t3s_nemo.config import Config, check_model_layout
from t3s_nemo.devices import cpu_mode_active
from t3s_nemo.errors import T3SError
from t3s_nemo.model import qwen3


@dataclass
class ModelBundle:
    chunks: list  # one GPTModel per virtual pipeline stage on this rank (unwrapped)
    tconfig: object  # megatron TransformerConfig
    shape: qwen3.Shape
    vocab_size: int  # vocabulary rows (padded: vocab_rows)
    dtype: torch.dtype
    packed_thd: bool  # packed examples go in as THD + cu_seqlens, not a block mask (qwen3.packs_thd)


def run_dtype(cfg: Config) -> torch.dtype:
    p = cfg.train.precision
    if p == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    if p == "bf16" and cpu_mode_active():
        raise T3SError("config key 'train.precision': bf16 needs a GPU; use fp32 (or auto) on CPU")
    return torch.bfloat16 if p == "bf16" else torch.float32


def vocab_rows(tokens: int, tp: int, inherited: Optional[int] = None, source: str = "",
               trained: Optional[int] = None) -> int:
    """The model's vocabulary rows (embedding and output layer) for `tokens` token ids at tensor parallel tp.

    A model keeps the rows of the weights it starts from (`inherited`: a checkpoint's padded_vocab_size,
    or a Hugging Face config's vocab_size rounded up to 128 as `t3s import` does), whatever the layout:
    Qwen3 checkpoints have 151,936 rows for a 151,669-token tokenizer, and re-padding them to 128 x tp
    (152,576 at tp=8) would change the model and refuse its weights; Megatron-Bridge keeps them too.
    Only a model with nothing to inherit (random init) gets the tokenizer's vocabulary padded to a
    multiple of 128 x tp, Megatron-LM's make_vocab_size_divisible_by. `trained`: the rows that hold trained
    ids (a Hugging Face config's vocab_size, before the import's zero padding); the tokenizer's ids must
    fit in them.
    """
    if inherited is None:
        return qwen3.padded_vocab_size(tokens, tp)
    trained = inherited if trained is None else trained
    if trained < tokens:
        raise T3SError(f"{source}: {trained} vocabulary rows, fewer than the {tokens} token ids the run needs "
                       "(the dataset's tokenizer, and a dLLM's mask token); was it made with another tokenizer?")
    return inherited


def build_model(cfg: Config, vocab_size: int, seq_length: int, *, bidirectional: bool = False) -> ModelBundle:
    """The GPTModel chunks of this rank's pipeline stage(s), randomly initialised from train.seed.

    vocab_size: the vocabulary rows as they are (see vocab_rows), split over the TP ranks.

    Random init uses megatron's CPU initialisation (full weight from the CPU generator, then split), so
    it is the same for every TP size; a run at another PP layout starts from the same weights only
    through model.init (a checkpoint).
    """
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    use_te = qwen3.attention_kind(cfg.model.spec) == "te"
    if cfg.parallel.sequence_parallel and cfg.parallel.tp > 1 and not use_te:
        raise T3SError("config key 'parallel.sequence_parallel': needs Transformer Engine layers (megatron-core's "
                       "local spec uses torch norms, which do not support it); install the `gpu` extra or use an "
                       "NGC container, or set parallel.sequence_parallel=false")
    if cfg.parallel.vpp and cpu_mode_active():
        raise T3SError("config key 'parallel.vpp': interleaved pipeline schedules are GPU-only here")
    shape = check_model_layout(cfg)
    dtype = run_dtype(cfg)
    if vocab_size % cfg.parallel.tp:
        raise T3SError(f"config key 'parallel.tp': the model's {vocab_size} vocabulary rows do not split over "
                       f"{cfg.parallel.tp} tensor-parallel ranks; choose a tp that divides {vocab_size}")
    tconfig = qwen3.transformer_config(
        shape, cfg.parallel, dtype=dtype, use_cpu_init=True, recompute=cfg.model.recompute,
        moe_grouped_gemm=use_te, moe_aux_loss_coeff=cfg.model.moe_aux_loss_coeff,
    )
    torch.manual_seed(cfg.train.seed)
    model_parallel_cuda_manual_seed(cfg.train.seed)
    chunks = []
    vpp = cfg.parallel.vpp or 1
    for vp_stage in range(vpp):
        stage = vp_stage if cfg.parallel.vpp else None
        spec = qwen3.layer_spec(cfg.model.spec, bidirectional=bidirectional, config=tconfig, vp_stage=stage)
        chunk = qwen3.build_gpt(
            tconfig, shape, vocab_size, seq_length, spec,
            pre_process=ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage),
            post_process=ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage),
            vp_stage=stage,
        )
        if torch.cuda.is_available() and not cpu_mode_active():
            chunk.cuda(torch.cuda.current_device())
        chunks.append(chunk)
    return ModelBundle(chunks, tconfig, shape, vocab_size, dtype, qwen3.packs_thd(cfg.model.spec, seq_length, cfg.parallel.cp))


def wrap_ddp(bundle: ModelBundle, cfg: Config) -> list:
    """megatron-core DDP around each chunk (contiguous grad buffers, reduce-scatter for the dist. optimizer)."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=cfg.parallel.overlap_grad_reduce,
        use_distributed_optimizer=cfg.parallel.distributed_optimizer,
        # per-token loss mode: gradients are divided by the global token count, not averaged over DP
        average_in_collective=False,
    )
    return [
        DistributedDataParallel(bundle.tconfig, ddp_config, chunk, disable_bucketing=i > 0)
        for i, chunk in enumerate(bundle.chunks)
    ]


def build_optimizer(model: list, cfg: Config, dtype: torch.dtype):
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    t = cfg.train
    ocfg = OptimizerConfig(
        optimizer="adam",  # AdamW: megatron's adam applies decoupled weight decay
        lr=t.lr,
        min_lr=t.min_lr,
        weight_decay=t.weight_decay,
        adam_beta1=t.adam_beta1,
        adam_beta2=t.adam_beta2,
        adam_eps=t.adam_eps,
        clip_grad=t.clip_grad,
        bf16=dtype == torch.bfloat16,
        params_dtype=dtype,
        use_distributed_optimizer=cfg.parallel.distributed_optimizer,
    )
    return get_megatron_optimizer(ocfg, model)


def build_scheduler(optimizer, cfg: Config):
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    t = cfg.train
    warmup = min(t.warmup_steps, t.steps)
    return OptimizerParamScheduler(
        optimizer,
        init_lr=t.min_lr if warmup else t.lr,
        max_lr=t.lr,
        min_lr=t.min_lr if t.lr_decay != "constant" else t.lr,
        lr_warmup_steps=warmup,
        lr_decay_steps=max(t.steps, warmup + 1),
        lr_decay_style=t.lr_decay,
        start_wd=t.weight_decay,
        end_wd=t.weight_decay,
        wd_incr_steps=t.steps,
        wd_incr_style="constant",
    )


def unwrap(model) -> list:
    """The GPTModel chunks inside DDP wrappers."""
    out = []
    for m in model:
        while hasattr(m, "module"):
            m = m.module
        out.append(m)
    return out


def first_param(chunks) -> Optional[torch.nn.Parameter]:
    for c in chunks:
        for p in c.parameters():
            return p
    return None
