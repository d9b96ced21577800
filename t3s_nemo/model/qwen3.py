"""Students as megatron-core GPTModels: presets, TransformerConfig, layer spec.

Dense Qwen3 shapes, and MoE shapes (num_experts > 0) built through megatron-core's MoE layers: router,
shared expert, expert parallelism, dense first layers. All model construction lives here, so moving
from GPTModel to megatron-core's HybridModel (0.19 deprecates the former) is one change.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from t3s_nemo.errors import T3SError


@dataclass(frozen=True)
class Shape:
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    head_dim: int = 128
    rope_theta: float = 1_000_000.0
    tie_embeddings: bool = False
    norm_eps: float = 1e-6
    max_position_embeddings: int = 40960
    rotary_percent: float = 1.0  # fraction of head_dim that RoPE rotates (the rest passes through)
    # Mixture of experts (megatron-core MoE); num_experts = 0 is a dense model.
    num_experts: int = 0
    moe_ffn_hidden_size: int = 0  # intermediate size of one routed expert
    moe_topk: int = 0  # routed experts per token
    moe_shared_expert_size: int = 0  # intermediate size of the always-on shared expert(s); 0 = none
    first_k_dense: int = 0  # the first k layers keep a dense MLP of ffn_hidden_size (moe_layer_freq)
    moe_score_function: str = "softmax"  # softmax | sigmoid
    moe_num_groups: int = 0  # group-limited routing: experts in this many groups (0 = off) ...
    moe_group_topk: int = 0  # ... of which this many are chosen per token
    moe_topk_scaling: float = 1.0  # routed weights x this (routed_scaling_factor)
    moe_expert_bias: bool = False  # aux-loss-free balancing: a per-expert routing bias updated each step

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def is_moe_layer(self, i: int) -> bool:
        """Layer i (0-based, global) has routed experts."""
        return self.is_moe and i >= self.first_k_dense


# The published Qwen3 shapes (config.json of Qwen/Qwen3-*); `tiny` is for tests and the CPU demo.
PRESETS: dict[str, Shape] = {
    "tiny": Shape(2, 64, 176, 4, 2, head_dim=16, rope_theta=10_000.0, tie_embeddings=True, max_position_embeddings=4096),
    "qwen3_0_6b": Shape(28, 1024, 3072, 16, 8, tie_embeddings=True),
    "qwen3_1_7b": Shape(28, 2048, 6144, 16, 8, tie_embeddings=True),
    "qwen3_4b": Shape(36, 2560, 9728, 32, 8, tie_embeddings=True),
    "qwen3_8b": Shape(36, 4096, 12288, 32, 8),
    "qwen3_14b": Shape(40, 5120, 17408, 40, 8),
    "qwen3_32b": Shape(64, 5120, 25600, 64, 8),
    # LLaDA2.0-mini (16B total, ~1.4B active), a BailingMoeV2-shaped masked-diffusion MoE. Numbers from
    # inclusionAI's config.json (inclusionAI/LLaDA2.0-mini on Hugging Face; the same values in
    # github.com/inclusionAI/dFactory configs/model_configs/llada2_mini/config.json): 20 layers, hidden
    # 2048, 16 heads, 4 KV heads, head_dim 128, QK-norm, no biases, intermediate_size 5120 for the
    # first_k_dense_replace=1 dense layer, 256 experts of moe_intermediate_size 512, 8 per token,
    # num_shared_experts=1 (512), sigmoid scores with an expert bias (moe_router_enable_expert_bias),
    # n_group 8 / topk_group 4, norm_topk_prob, routed_scaling_factor 2.5, router in fp32, rope_theta
    # 600000 on partial_rotary_factor 0.5 of each head, rms_norm_eps 1e-6, untied embeddings,
    # vocab_size 157184, max_position_embeddings 16384 (dFactory) / 32768 (the HF card's file).
    # Every architectural field maps onto TransformerConfig (moe_kwargs; megatron's sigmoid group-limited
    # router with expert bias computes LLaDA2's gate); the vocabulary comes from the tokenizer as for every
    # preset. Not reproduced: LLaDA2's training recipe (block diffusion, its balancing settings: the
    # config gives no aux-loss coefficient) and its HF weights (no importer). docs/dllm.md, "MoE".
    "llada2_mini": Shape(20, 2048, 5120, 16, 4, head_dim=128, rope_theta=600_000.0, max_position_embeddings=16384,
                         rotary_percent=0.5, num_experts=256, moe_ffn_hidden_size=512, moe_topk=8,
                         moe_shared_expert_size=512, first_k_dense=1, moe_score_function="sigmoid",
                         moe_num_groups=8, moe_group_topk=4, moe_topk_scaling=2.5, moe_expert_bias=True),
    # A LLaDA2-like MoE small enough for CPU tests: one dense layer then one MoE layer of 4 experts (top-2
    # in 2 groups, one group per token), a shared expert, sigmoid routing with an expert bias, half RoPE.
    "tiny_moe": Shape(2, 64, 176, 4, 2, head_dim=16, rope_theta=10_000.0, tie_embeddings=True,
                      max_position_embeddings=4096, rotary_percent=0.5, num_experts=4, moe_ffn_hidden_size=32,
                      moe_topk=2, moe_shared_expert_size=32, first_k_dense=1, moe_score_function="sigmoid",
                      moe_num_groups=2, moe_group_topk=1, moe_topk_scaling=2.5, moe_expert_bias=True),
}

OVERRIDABLE = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
               "head_dim", "rope_theta", "tie_embeddings", "norm_eps", "max_position_embeddings", "rotary_percent",
               "num_experts", "moe_ffn_hidden_size", "moe_topk", "moe_shared_expert_size", "first_k_dense")
# the fields a checkpoint's shape must share with the model it is loaded into
LOAD_FIELDS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
               "head_dim", "num_experts", "moe_ffn_hidden_size", "moe_shared_expert_size", "first_k_dense")
# the fields that change what loaded weights compute without changing any tensor's shape
FUNCTION_FIELDS = ("rope_theta", "norm_eps", "rotary_percent", "moe_topk")


def resolve_shape(model_cfg) -> Shape:
    """The preset named by model.preset with the model.* shape overrides applied."""
    if model_cfg.preset not in PRESETS:
        raise T3SError(f"config key 'model.preset': unknown preset '{model_cfg.preset}' "
                       f"(one of {', '.join(PRESETS)})")
    shape = PRESETS[model_cfg.preset]
    changes = {k: getattr(model_cfg, k) for k in OVERRIDABLE if getattr(model_cfg, k) is not None}
    return dataclasses.replace(shape, **changes)


def padded_vocab_size(vocab_size: int, tp: int, divisible_by: int = 128) -> int:
    """Vocabulary rounded up so the embedding splits evenly over TP ranks (Megatron's convention)."""
    multiple = divisible_by * tp
    return ((vocab_size + multiple - 1) // multiple) * multiple


def check_shape(shape: Shape, tp: int, pp: int, vpp: Optional[int] = None, ep: int = 1) -> None:
    if shape.num_attention_heads % shape.num_query_groups:
        raise T3SError(f"model: num_attention_heads={shape.num_attention_heads} is not a multiple of "
                       f"num_query_groups={shape.num_query_groups}")
    if shape.num_query_groups % tp and tp % shape.num_query_groups:
        raise T3SError(f"config key 'parallel.tp': {tp} does not divide the model's "
                       f"{shape.num_query_groups} query groups")
    if shape.num_attention_heads % tp:
        raise T3SError(f"config key 'parallel.tp': {tp} does not divide {shape.num_attention_heads} attention heads")
    stages = pp * (vpp or 1)
    if shape.num_layers % stages:
        raise T3SError(f"config key 'parallel.pp': {shape.num_layers} layers do not split into "
                       f"{stages} pipeline stages")
    check_moe(shape, ep)


def check_moe(shape: Shape, ep: int = 1) -> None:
    """MoE fields that megatron-core would reject (or mis-build), as errors naming the key."""
    if ep < 1:
        raise T3SError(f"config key 'parallel.ep': must be > 0, got {ep}")
    if not shape.is_moe:
        if shape.num_experts < 0:
            raise T3SError(f"config key 'model.num_experts': must be >= 0 (0 = dense), got {shape.num_experts}")
        if ep > 1:
            raise T3SError(f"config key 'parallel.ep': expert parallelism ({ep}) needs an MoE model "
                           "(model.preset=llada2_mini | tiny_moe, or model.num_experts > 0)")
        return
    if shape.moe_ffn_hidden_size <= 0:
        raise T3SError(f"config key 'model.moe_ffn_hidden_size': an MoE model needs it > 0, got {shape.moe_ffn_hidden_size}")
    if not 0 < shape.moe_topk <= shape.num_experts:
        raise T3SError(f"config key 'model.moe_topk': must be in 1..num_experts={shape.num_experts}, got {shape.moe_topk}")
    if shape.moe_shared_expert_size < 0:
        raise T3SError(f"config key 'model.moe_shared_expert_size': must be >= 0 (0 = none), got {shape.moe_shared_expert_size}")
    if not 0 <= shape.first_k_dense < shape.num_layers:
        raise T3SError(f"config key 'model.first_k_dense': must be in 0..num_layers-1={shape.num_layers - 1} "
                       f"(at least one MoE layer), got {shape.first_k_dense}")
    if shape.first_k_dense and shape.ffn_hidden_size <= 0:
        raise T3SError("config key 'model.ffn_hidden_size': the dense first layers need it > 0")
    if shape.moe_score_function not in ("softmax", "sigmoid"):
        raise T3SError(f"model.preset: moe_score_function '{shape.moe_score_function}' is not softmax | sigmoid")
    if shape.moe_expert_bias and shape.moe_score_function != "sigmoid":
        raise T3SError("model.preset: an expert routing bias needs sigmoid router scores (megatron-core)")
    if shape.moe_num_groups:
        g = shape.moe_num_groups
        if shape.num_experts % g or not 0 < shape.moe_group_topk <= g:
            raise T3SError(f"config key 'model.num_experts': {shape.num_experts} experts do not split into the "
                           f"preset's {g} routing groups (choosing {shape.moe_group_topk})")
        # megatron ranks groups by the sum of their top (topk // group_topk) scores
        if not shape.moe_group_topk <= shape.moe_topk <= shape.moe_group_topk * (shape.num_experts // g):
            raise T3SError(f"config key 'model.moe_topk': {shape.moe_topk} experts per token cannot come from "
                           f"{shape.moe_group_topk} of {g} groups of {shape.num_experts // g}")
    if shape.num_experts % ep:
        raise T3SError(f"config key 'parallel.ep': {ep} does not divide the model's {shape.num_experts} experts")


def moe_layer_pattern(shape: Shape) -> list[int]:
    """megatron-core's moe_layer_freq as a list: 0 = dense MLP, 1 = MoE, per layer."""
    return [1 if shape.is_moe_layer(i) else 0 for i in range(shape.num_layers)]


def moe_kwargs(shape: Shape, parallel, *, grouped_gemm: bool = False, aux_loss_coeff: float = 1e-3) -> dict:
    """The TransformerConfig fields of an MoE shape ({} for a dense one).

    Routing follows the shape (softmax or sigmoid scores, group-limited top-k, routed scaling, expert
    bias); the load-balancing aux loss (megatron's "aux_loss", per micro-batch) is added to the training
    loss through MoEAuxLossAutoScaler when aux_loss_coeff > 0. The token dispatcher is "allgather" (the
    one that runs on CPU/gloo); experts are SequentialMLP on the local spec and TE's grouped GEMM on the
    TE spec (grouped_gemm).
    """
    if not shape.is_moe:
        return {}
    return dict(
        num_moe_experts=shape.num_experts,
        moe_ffn_hidden_size=shape.moe_ffn_hidden_size,
        moe_router_topk=shape.moe_topk,
        moe_shared_expert_intermediate_size=shape.moe_shared_expert_size or None,
        moe_layer_freq=moe_layer_pattern(shape),
        moe_router_score_function=shape.moe_score_function,
        moe_router_num_groups=shape.moe_num_groups or None,
        moe_router_group_topk=shape.moe_group_topk or None,
        moe_router_topk_scaling_factor=shape.moe_topk_scaling if shape.moe_topk_scaling != 1.0 else None,
        moe_router_enable_expert_bias=shape.moe_expert_bias,
        moe_router_pre_softmax=shape.moe_score_function == "softmax" and shape.moe_topk == 1,
        moe_router_dtype="fp32",
        moe_router_load_balancing_type="aux_loss" if aux_loss_coeff > 0 else "none",
        moe_aux_loss_coeff=aux_loss_coeff,
        moe_token_dispatcher_type="allgather",
        moe_grouped_gemm=grouped_gemm,
        expert_model_parallel_size=getattr(parallel, "ep", 1),
    )


def transformer_config(shape: Shape, parallel, *, dtype: torch.dtype, use_cpu_init: bool,
                       recompute: str = "none", bidirectional: bool = False, moe_grouped_gemm: bool = False,
                       moe_aux_loss_coeff: float = 1e-3):
    """megatron-core TransformerConfig for a shape (dense Qwen3 or MoE) and the run's parallel layout."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    recompute_kwargs = {}
    if recompute == "selective":
        recompute_kwargs = dict(recompute_granularity="selective")
    elif recompute == "full":
        recompute_kwargs = dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    return TransformerConfig(
        num_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        ffn_hidden_size=shape.ffn_hidden_size,
        num_attention_heads=shape.num_attention_heads,
        num_query_groups=shape.num_query_groups,
        kv_channels=shape.head_dim,
        gated_linear_unit=True,  # SwiGLU
        activation_func=F.silu,
        normalization="RMSNorm",
        layernorm_epsilon=shape.norm_eps,
        qk_layernorm=True,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=0.02,
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        tensor_model_parallel_size=parallel.tp,
        pipeline_model_parallel_size=parallel.pp,
        virtual_pipeline_model_parallel_size=parallel.vpp,
        context_parallel_size=parallel.cp,
        # context parallelism pads every example to a multiple of 2 x cp, so the activations sent between
        # pipeline stages vary in length: megatron then sends their shape first
        variable_seq_lengths=parallel.cp > 1 and parallel.pp > 1,
        # (a dense model has no token dispatcher, but megatron's check for one refuses the default
        # "allgather" with variable lengths; MoE presets are refused with cp > 1)
        **({"moe_token_dispatcher_type": "alltoall"} if parallel.cp > 1 and parallel.pp > 1 and not shape.is_moe
           else {}),
        sequence_parallel=parallel.sequence_parallel and parallel.tp > 1,
        use_cpu_initialization=use_cpu_init,
        calculate_per_token_loss=True,  # the T3S hook normalises by the global weighted-token count
        **recompute_kwargs,
        **moe_kwargs(shape, parallel, grouped_gemm=moe_grouped_gemm, aux_loss_coeff=moe_aux_loss_coeff),
    )


def layer_spec(spec: str = "auto", bidirectional: bool = False, config=None, vp_stage: Optional[int] = None):
    """The layer spec for model.spec.

    auto: Transformer Engine's when TE imports, otherwise megatron-core's local spec with its core
    attention replaced by `SDPAttention` (torch's scaled_dot_product_attention: flash / memory-efficient
    kernels, packed examples via cu_seqlens). sdpa, te and local force one; local is megatron-core's
    DotProductAttention with a block-diagonal [s, s] mask (the reference the sdpa spec is tested against).

    bidirectional: non-causal self-attention (the dLLM objective); examples stay separated by the
    block-diagonal mask or cu_seqlens (THD), whichever packs_thd chose.
    config: with an MoE TransformerConfig (num_moe_experts), megatron-core's decoder block spec of this
    pipeline stage (get_gpt_decoder_block_spec: dense layers where moe_layer_freq is 0, MoE layers
    elsewhere, with SequentialMLP experts on the local spec and TE's grouped GEMM on the TE spec).
    """
    kind = attention_kind(spec)
    spec_ = _layer_spec(kind)
    if config is not None and config.num_moe_experts:
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec

        spec_ = get_gpt_decoder_block_spec(config, use_transformer_engine=kind == "te", normalization="RMSNorm",
                                           vp_stage=vp_stage)
    if kind == "sdpa" or bidirectional:  # the specs below are edited: megatron's are module-level objects
        import copy

        spec_ = copy.deepcopy(spec_)
    layers = getattr(spec_, "layer_specs", None) or [spec_]
    if kind == "sdpa":
        from t3s_nemo.model.attention import SDPAttention

        for layer in layers:
            layer.submodules.self_attention.submodules.core_attention = SDPAttention
    if bidirectional:
        from megatron.core.transformer.enums import AttnMaskType

        for layer in layers:
            layer.submodules.self_attention.params = {**layer.submodules.self_attention.params,
                                                      "attn_mask_type": AttnMaskType.padding}
    return spec_


def attention_kind(spec: str = "auto") -> str:
    """te | sdpa | local for a model.spec value (auto: te when Transformer Engine imports, else sdpa)."""
    from t3s_nemo.devices import te_available

    if spec == "auto":
        return "te" if te_available() else "sdpa"
    if spec == "te" and not te_available():
        raise T3SError("config key 'model.spec': 'te' needs Transformer Engine on a CUDA machine "
                       "(pip install 't3s-nemo[gpu]' or use an NGC container)")
    if spec not in ("te", "sdpa", "local"):
        raise T3SError(f"config key 'model.spec': expected auto, te, sdpa or local, got {spec!r}")
    return spec


def packs_thd(spec: str = "auto", seq_length: Optional[int] = None, cp: int = 1) -> bool:
    """Whether packed examples go to the model as THD + cu_seqlens or with a block-diagonal mask.

    te: THD. local: the mask. sdpa: THD from SDPA_THD_MIN_TOKENS tokens per bin (or with no length
    given), the mask below it: short bins of many short examples run faster as one masked call than
    example by example (t3s_nemo/model/attention.py). With context parallelism (cp > 1) always THD.
    """
    from t3s_nemo.model.attention import SDPA_THD_MIN_TOKENS

    kind = attention_kind(spec)
    if kind == "sdpa":
        return cp > 1 or seq_length is None or seq_length >= SDPA_THD_MIN_TOKENS
    return kind == "te"


def _layer_spec(kind: str):
    if kind == "te":
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=True)
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    return get_gpt_layer_local_spec(qk_layernorm=True, normalization="RMSNorm")


def build_gpt(config, shape: Shape, vocab_size: int, seq_length: int, spec, *, pre_process: bool,
              post_process: bool, vp_stage: Optional[int] = None):
    """One GPTModel chunk for this pipeline stage."""
    from megatron.core.models.gpt.gpt_model import GPTModel

    kwargs = dict(vp_stage=vp_stage) if vp_stage is not None else {}
    return GPTModel(
        config=config,
        transformer_layer_spec=spec,
        vocab_size=vocab_size,
        max_sequence_length=max(seq_length, shape.max_position_embeddings),
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=shape.tie_embeddings,
        position_embedding_type="rope",
        rotary_base=int(shape.rope_theta),
        rotary_percent=shape.rotary_percent,
        **kwargs,
    )


def _attention_params(shape: Shape) -> int:
    h = shape.hidden_size
    q = shape.num_attention_heads * shape.head_dim
    kv = shape.num_query_groups * shape.head_dim
    return h * (q + 2 * kv) + q * h  # QKV, proj


def mlp_params(shape: Shape, layer: int, active: bool = False) -> int:
    """MLP parameters of one layer: dense SwiGLU, or router + experts + shared expert (active: only the
    moe_topk routed experts a token passes through)."""
    h = shape.hidden_size
    if not shape.is_moe_layer(layer):
        return 3 * h * shape.ffn_hidden_size
    experts = shape.moe_topk if active else shape.num_experts
    return h * shape.num_experts + experts * 3 * h * shape.moe_ffn_hidden_size + 3 * h * shape.moe_shared_expert_size


def num_parameters(shape: Shape, vocab_size: int, active: bool = False) -> int:
    """Parameter count of the full model (all ranks); active: those one token uses (MoE: top-k experts)."""
    h = shape.hidden_size
    norms = 2 * h + 2 * shape.head_dim
    layers = sum(_attention_params(shape) + mlp_params(shape, i, active) + norms for i in range(shape.num_layers))
    emb = vocab_size * h * (1 if shape.tie_embeddings else 2)
    return layers + emb + h


def flops_per_token(shape: Shape, vocab_size: int, seq_length: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward) of a sequence of seq_length tokens,
    attention counted causally; MoE layers count the experts a token is routed to (and the shared
    expert), not all of them. For packed bins of several examples see step_flops."""
    return step_flops(shape, vocab_size, seq_length, seq_length**2) / seq_length


def step_flops(shape: Shape, vocab_size: int, tokens: float, sum_sq_lengths: float,
               bidirectional: bool = False) -> float:
    """Training FLOPs of `tokens` tokens in examples whose squared lengths sum to sum_sq_lengths.

    Packed examples attend only within themselves, so attention costs sum(n_i^2), not tokens x bin
    length: counting the bin would overstate MFU by 1.2-1.4x for an 8B model on 16k-32k bins of shorter
    traces. Causal attention sees half the square (QK^T and AV: 2 x q x n^2 / 2 x 2 per layer); a
    bidirectional (dLLM) one all of it.
    """
    q = shape.num_attention_heads * shape.head_dim
    L = shape.num_layers
    matmul = sum(_attention_params(shape) + mlp_params(shape, i, active=True) for i in range(L)) + vocab_size * shape.hidden_size
    attention = L * q * sum_sq_lengths * (2 if bidirectional else 1)
    return 3 * 2 * (matmul * tokens + attention)
