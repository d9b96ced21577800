"""Qwen3 students as megatron-core GPTModels: presets, TransformerConfig, layer spec.

All model construction lives here, so moving from GPTModel to megatron-core's HybridModel (0.19
deprecates the former) is one change.
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


# The published Qwen3 shapes (config.json of Qwen/Qwen3-*); `tiny` is for tests and the CPU demo.
PRESETS: dict[str, Shape] = {
    "tiny": Shape(2, 64, 176, 4, 2, head_dim=16, rope_theta=10_000.0, tie_embeddings=True, max_position_embeddings=4096),
    "qwen3_0_6b": Shape(28, 1024, 3072, 16, 8, tie_embeddings=True),
    "qwen3_1_7b": Shape(28, 2048, 6144, 16, 8, tie_embeddings=True),
    "qwen3_4b": Shape(36, 2560, 9728, 32, 8, tie_embeddings=True),
    "qwen3_8b": Shape(36, 4096, 12288, 32, 8),
    "qwen3_14b": Shape(40, 5120, 17408, 40, 8),
    "qwen3_32b": Shape(64, 5120, 25600, 64, 8),
}

_OVERRIDABLE = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
                "head_dim", "rope_theta", "tie_embeddings")


def resolve_shape(model_cfg) -> Shape:
    """The preset named by model.preset with the model.* shape overrides applied."""
    if model_cfg.preset not in PRESETS:
        raise T3SError(f"config key 'model.preset': unknown preset '{model_cfg.preset}' "
                       f"(one of {', '.join(PRESETS)})")
    shape = PRESETS[model_cfg.preset]
    changes = {k: getattr(model_cfg, k) for k in _OVERRIDABLE if getattr(model_cfg, k) is not None}
    return dataclasses.replace(shape, **changes)


def padded_vocab_size(vocab_size: int, tp: int, divisible_by: int = 128) -> int:
    """Vocabulary rounded up so the embedding splits evenly over TP ranks (Megatron's convention)."""
    multiple = divisible_by * tp
    return ((vocab_size + multiple - 1) // multiple) * multiple


def check_shape(shape: Shape, tp: int, pp: int, vpp: Optional[int] = None) -> None:
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


def transformer_config(shape: Shape, parallel, *, dtype: torch.dtype, use_cpu_init: bool,
                       recompute: str = "none", bidirectional: bool = False):
    """megatron-core TransformerConfig for a Qwen3 shape and the run's parallel layout."""
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
        sequence_parallel=parallel.sequence_parallel and parallel.tp > 1,
        use_cpu_initialization=use_cpu_init,
        calculate_per_token_loss=True,  # the T3S hook normalises by the global weighted-token count
        **recompute_kwargs,
    )


def layer_spec(spec: str = "auto", bidirectional: bool = False):
    """Transformer Engine spec when TE imports (or spec='te'), megatron-core's local spec otherwise.

    bidirectional: non-causal self-attention (the dLLM objective); examples stay separated by the
    block-diagonal mask (local) or cu_seqlens (TE, THD).
    """
    spec_, use_te = _layer_spec(spec)
    if bidirectional:
        import copy

        from megatron.core.transformer.enums import AttnMaskType

        spec_ = copy.deepcopy(spec_)
        spec_.submodules.self_attention.params = {**spec_.submodules.self_attention.params,
                                                  "attn_mask_type": AttnMaskType.padding}
    return spec_, use_te


def _layer_spec(spec: str):
    from t3s_nemo.devices import te_available

    use_te = spec == "te" or (spec == "auto" and te_available())
    if use_te:
        if not te_available():
            raise T3SError("config key 'model.spec': 'te' needs Transformer Engine on a CUDA machine "
                           "(pip install 't3s-nemo[gpu]' or use an NGC container)")
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=True), True
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    return get_gpt_layer_local_spec(qk_layernorm=True, normalization="RMSNorm"), False


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
        rotary_percent=1.0,
        **kwargs,
    )


def num_parameters(shape: Shape, vocab_size: int) -> int:
    """Parameter count of the full model (all ranks)."""
    h, f = shape.hidden_size, shape.ffn_hidden_size
    q = shape.num_attention_heads * shape.head_dim
    kv = shape.num_query_groups * shape.head_dim
    per_layer = h * (q + 2 * kv) + q * h + 3 * h * f + 2 * h + 2 * shape.head_dim
    emb = vocab_size * h * (1 if shape.tie_embeddings else 2)
    return shape.num_layers * per_layer + emb + h


def flops_per_token(shape: Shape, vocab_size: int, seq_length: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward), attention counted causally."""
    h, f, L = shape.hidden_size, shape.ffn_hidden_size, shape.num_layers
    q = shape.num_attention_heads * shape.head_dim
    kv = shape.num_query_groups * shape.head_dim
    matmul = L * (h * (q + 2 * kv) + q * h + 3 * h * f) + vocab_size * h
    attention = L * q * seq_length  # QK^T and AV, half the square under the causal mask, x2 for both
    return 3 * 2 * (matmul + attention)
