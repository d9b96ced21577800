"""`t3s plan`: per-GPU memory of a layout (dense Qwen3 or MoE) before you queue it.

Parameters per rank come from the real megatron-core model of that rank, built on the meta device (no
memory, no GPU) inside torch's fake process group with the layout's world size (`meta_rank_params`); the
closed form `rank_params` says the same (tests/unit/test_plan.py checks one against the other). Activation bytes follow Korthikanti et al. (2022), "Reducing
Activation Recomputation in Large Transformer Models": per layer s*b*h*(34 + 5*a*s/h) bytes without
recomputation, s*b*h*34 with selective recomputation, s*b*h*2 with full recomputation; divided by TP
when sequence parallelism is on and by CP; the first pipeline stage of a 1F1B schedule holds pp
micro-batches in flight, i.e. about num_layers layers' worth.

MoE (expert parallelism ep): a rank holds num_experts / ep routed experts of each of its MoE layers
(expert tensor parallelism = tp, megatron-core's default), the router and the shared expert as any dense
weight; the distributed optimizer shards expert state over the expert-data-parallel ranks
(dp * cp / ep) and the rest over dp. Activations use the dense formula (an approximation for MoE
layers: routed tokens are held topk times at moe_ffn_hidden_size instead of once at ffn_hidden_size).

Context parallelism with the sdpa spec all-gathers K and V (t3s_nemo/model/attention.py), so each rank
also holds the whole micro-batch's K and V, which `estimate(gathered_kv=True)` adds; Transformer
Engine's ring attention passes them around instead and holds at most a couple of chunks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from t3s_nemo.model.qwen3 import Shape

GiB = 1024**3


@dataclass
class RankMemory:
    tp: int
    pp: int
    cp: int
    dp: int
    seq_length: int
    params: int  # parameters on the busiest rank
    weights: float  # bytes
    grads: float
    optimizer: float
    activations: float
    logits: float

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer + self.activations + self.logits


def _stage_layers(shape: Shape, pp: int) -> tuple[range, range]:
    """Global layer indices of the first and of the last pipeline stage."""
    n = shape.num_layers // pp
    return range(0, n), range(shape.num_layers - n, shape.num_layers)


def _layer_params(shape: Shape, i: int, tp: int, ep: int) -> int:
    """Parameters of global layer i on one rank (TP splits the matmuls, EP the routed experts)."""
    h = shape.hidden_size
    q = shape.num_attention_heads * shape.head_dim
    kv = shape.num_query_groups * shape.head_dim
    split = (h * (q + 2 * kv) + q * h) // tp  # QKV, proj
    replicated = 2 * h + 2 * shape.head_dim  # two RMSNorms, q/k norms
    if not shape.is_moe_layer(i):
        return split + 3 * h * shape.ffn_hidden_size // tp + replicated  # fc1 (gate+up), fc2
    experts = shape.num_experts // ep * 3 * h * shape.moe_ffn_hidden_size // tp  # expert TP = tp
    shared = 3 * h * shape.moe_shared_expert_size // tp
    router = h * shape.num_experts  # replicated on every rank (the expert bias is a buffer)
    return split + experts + shared + router + replicated


def rank_params(shape: Shape, vocab: int, tp: int, pp: int, ep: int = 1) -> tuple[int, int]:
    """(parameters on the first stage, on the last stage) of one TP (and EP) rank."""
    h = shape.hidden_size
    first_layers, last_layers = (sum(_layer_params(shape, i, tp, ep) for i in r) for r in _stage_layers(shape, pp))
    embedding = vocab * h // tp
    if pp == 1:
        only = first_layers + h + embedding * (1 if shape.tie_embeddings else 2)
        return only, only
    # with PP the last stage holds its own output layer, a copy of the embedding when tied
    return first_layers + embedding, last_layers + h + embedding


def rank_expert_params(shape: Shape, tp: int, pp: int, ep: int = 1) -> tuple[int, int]:
    """(routed-expert parameters on a first-stage rank, on a last-stage rank): the part of rank_params
    whose optimizer state is sharded over the expert-data-parallel ranks."""
    per = shape.num_experts // max(ep, 1) * 3 * shape.hidden_size * shape.moe_ffn_hidden_size // tp
    first, last = _stage_layers(shape, pp)
    return (sum(per for i in first if shape.is_moe_layer(i)), sum(per for i in last if shape.is_moe_layer(i)))


def meta_rank_params(shape: Shape, vocab_size: int, layouts: list[tuple[int, ...]],
                     rows: Optional[int] = None) -> dict[tuple[int, ...], tuple[int, int]]:
    """(tp, pp) or (tp, pp, ep) -> (parameters on a first-stage rank, on a last-stage rank), counted on real
    megatron-core models built on the meta device, one rank at a time.

    megatron-core sizes every layer from its process groups, so each rank is built inside torch's fake
    process group ("fake" backend + FakeStore: collectives are no-ops, no peers needed) with the layout's
    world size (tp * pp * ep: the smallest world with an expert-parallel group of ep), as torchtitan does
    for its memory estimates. There is no public torch API for this; the module lives under
    torch.testing. The local layer spec is used (megatron-core's decoder block spec for MoE shapes):
    Transformer Engine's layers have the same parameters and need a GPU to build. vocab_size is the
    tokenizer's; it is padded per TP size, unless `rows` (the vocabulary rows of model.init's weights,
    which a run keeps at any TP: t3s_nemo.training.setup.vocab_rows) is given.
    """
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from t3s_nemo.config import ParallelConfig
    from t3s_nemo.devices import install_cpu_mode
    from t3s_nemo.model import qwen3

    if dist.is_initialized():
        raise RuntimeError("meta_rank_params builds its own process groups; call it outside a distributed run")
    if not torch.cuda.is_available():
        install_cpu_mode()
    out = {}
    for layout in layouts:
        tp, pp, ep = (*layout, 1)[:3]
        world = tp * pp * ep
        counts = []
        for rank in (0, world - 1):  # pipeline-parallel is the outermost group: the last rank is on the last stage
            dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
            try:
                ps.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                             expert_model_parallel_size=ep, create_gloo_process_groups=False)
                config = qwen3.transformer_config(shape, ParallelConfig(tp=tp, pp=pp, ep=ep), dtype=torch.bfloat16,
                                                  use_cpu_init=True, recompute="none")
                config.perform_initialization = False  # shapes only (random init on meta is slow for 5k experts)
                spec = qwen3.layer_spec("local", config=config)
                with torch.device("meta"):
                    model = qwen3.build_gpt(config, shape, rows or qwen3.padded_vocab_size(vocab_size, tp), 4096, spec,
                                            pre_process=ps.is_pipeline_first_stage(),
                                            post_process=ps.is_pipeline_last_stage())
                counts.append(sum(p.numel() for p in model.parameters()))
            finally:
                ps.destroy_model_parallel()
                dist.destroy_process_group()
        out[tuple(layout)] = (counts[0], counts[1])
    return out


def count(n: float) -> str:
    """A parameter count for people: 32.76B, 751.1M."""
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def estimate(shape: Shape, vocab: int, tp: int, pp: int, cp: int, dp: int, seq_length: int,
             micro_batch_size: int = 1, recompute: str = "selective", sequence_parallel: bool = True,
             distributed_optimizer: bool = True, bf16: bool = True,
             params: Optional[tuple[int, int]] = None, ep: int = 1, gathered_kv: bool = False) -> RankMemory:
    """params: (first-stage, last-stage) parameters of one rank, e.g. from meta_rank_params; default the
    closed form. vocab is the padded vocabulary. ep: expert-parallel size (MoE shapes). gathered_kv: the
    attention all-gathers K and V over the CP ranks (the sdpa spec's context parallelism), so with cp > 1
    each rank also holds the whole micro-batch's K and V (every example's, concatenated for SDPA): kept
    for backward in every layer in flight without recomputation, one layer at a time with selective or
    full recomputation (recomputed)."""
    first, last = params or rank_params(shape, vocab, tp, pp, ep)
    stage = 0 if first >= last else 1
    params = max(first, last)
    experts = rank_expert_params(shape, tp, pp, ep)[stage] if shape.is_moe else 0
    wbytes = 2 if bf16 else 4
    weights = params * wbytes
    grads = params * 4  # grad_reduce_in_fp32
    opt_per_param = (4 if bf16 else 0) + 8  # fp32 master copy (bf16 runs) + Adam moments
    expert_dp = max(dp * cp // ep, 1)  # expert-data-parallel ranks (expert TP = tp)
    optimizer = ((params - experts) * opt_per_param / (dp if distributed_optimizer else 1)
                 + experts * opt_per_param / (expert_dp if distributed_optimizer else 1))
    s = seq_length / cp
    b, h, a = micro_batch_size, shape.hidden_size, shape.num_attention_heads
    if recompute == "full":
        per_layer = s * b * h * 2
    else:
        per_layer = s * b * h * 34 + (0 if recompute == "selective" else 5 * a * s * s * b)
    if sequence_parallel or recompute == "full":
        per_layer /= tp
    layers_in_flight = shape.num_layers  # (num_layers / pp) layers x pp micro-batches on stage 0
    activations = per_layer * layers_in_flight
    if gathered_kv and cp > 1:
        # each example's K and V, put together from every rank's chunks (its own included) for SDPA,
        # which keeps them for backward: 2 x groups x head_dim per token of the whole micro-batch
        kv = 2 * seq_length * b * shape.num_query_groups / tp * shape.head_dim * wbytes
        activations += kv * (layers_in_flight if recompute == "none" else 1)
    logits = 2 * s * b * vocab * 4 / tp  # fp32 logits and their gradient on the last stage
    return RankMemory(tp, pp, cp, dp, seq_length, params, weights, grads, optimizer, activations, logits)


def table(rows: list[RankMemory], gpu_gib: float):
    from rich.table import Table

    t = Table(title=f"estimated memory per GPU (GiB), budget {gpu_gib:g} GiB")
    for col in ("tp", "pp", "cp", "dp", "seq", "params", "weights", "grads", "optim", "activ", "logits",
                "total", "fits"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(str(r.tp), str(r.pp), str(r.cp), str(r.dp), (f"{r.seq_length // 1024}k" if r.seq_length % 1024 == 0 else str(r.seq_length)), count(r.params),
                  *(f"{x / GiB:.1f}" for x in (r.weights, r.grads, r.optimizer, r.activations, r.logits, r.total)),
                  "yes" if r.total < gpu_gib * GiB * 0.9 else "[red]no[/]")
    return t
