"""`t3s plan`: per-GPU memory of a Qwen3 layout before you queue it.

Parameters per rank are counted exactly from the shape and the layout (which tensors TP splits, which
layers a PP stage holds, where the embedding and output layer live); `tests/unit/test_plan.py` checks the
count against a real megatron-core model. Activation bytes follow Korthikanti et al. (2022), "Reducing
Activation Recomputation in Large Transformer Models": per layer s*b*h*(34 + 5*a*s/h) bytes without
recomputation, s*b*h*34 with selective recomputation, s*b*h*2 with full recomputation; divided by TP
when sequence parallelism is on and by CP; the first pipeline stage of a 1F1B schedule holds pp
micro-batches in flight, i.e. about num_layers layers' worth.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def rank_params(shape: Shape, vocab: int, tp: int, pp: int) -> tuple[int, int]:
    """(parameters on the first stage, on the last stage) of one TP rank."""
    h, f = shape.hidden_size, shape.ffn_hidden_size
    q = shape.num_attention_heads * shape.head_dim
    kv = shape.num_query_groups * shape.head_dim
    split = (h * (q + 2 * kv) + q * h + 3 * h * f) // tp  # QKV, proj, fc1 (gate+up), fc2
    replicated = 2 * h + 2 * shape.head_dim  # two RMSNorms, q/k norms
    per_layer = split + replicated
    layers = shape.num_layers // pp
    embedding = vocab * h // tp
    if pp == 1:
        only = layers * per_layer + h + embedding * (1 if shape.tie_embeddings else 2)
        return only, only
    # with PP the last stage holds its own output layer, a copy of the embedding when tied
    return layers * per_layer + embedding, layers * per_layer + h + embedding


def estimate(shape: Shape, vocab: int, tp: int, pp: int, cp: int, dp: int, seq_length: int,
             micro_batch_size: int = 1, recompute: str = "selective", sequence_parallel: bool = True,
             distributed_optimizer: bool = True, bf16: bool = True) -> RankMemory:
    first, last = rank_params(shape, vocab, tp, pp)
    params = max(first, last)
    wbytes = 2 if bf16 else 4
    weights = params * wbytes
    grads = params * 4  # grad_reduce_in_fp32
    opt_per_param = (4 if bf16 else 0) + 8  # fp32 master copy (bf16 runs) + Adam moments
    optimizer = params * opt_per_param / (dp if distributed_optimizer else 1)
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
    logits = 2 * s * b * vocab * 4 / tp  # fp32 logits and their gradient on the last stage
    return RankMemory(tp, pp, cp, dp, seq_length, params, weights, grads, optimizer, activations, logits)


def table(rows: list[RankMemory], gpu_gib: float):
    from rich.table import Table

    t = Table(title=f"estimated memory per GPU (GiB), budget {gpu_gib:g} GiB")
    for col in ("tp", "pp", "cp", "dp", "seq", "params", "weights", "grads", "optim", "activ", "logits",
                "total", "fits"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(str(r.tp), str(r.pp), str(r.cp), str(r.dp), f"{r.seq_length // 1024}k", f"{r.params / 1e9:.2f}B",
                  *(f"{x / GiB:.1f}" for x in (r.weights, r.grads, r.optimizer, r.activations, r.logits, r.total)),
                  "yes" if r.total < gpu_gib * GiB * 0.9 else "[red]no[/]")
    return t
