"""MoE presets as megatron-core TransformerConfigs, and the MoE config errors (one line, naming the key)."""

from __future__ import annotations

import pytest

from t3s_nemo.config import Config, check_parallel, load_config
from t3s_nemo.errors import T3SError
from t3s_nemo.model import qwen3
from t3s_nemo.model.qwen3 import PRESETS, check_shape, resolve_shape


def shape_error(overrides: list[str], ep: int = 1) -> str:
    cfg = load_config(None, overrides)
    with pytest.raises(T3SError) as info:
        check_shape(resolve_shape(cfg.model), cfg.parallel.tp, cfg.parallel.pp, ep=ep)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_llada2_mini_maps_onto_megatron_core_moe():
    import torch

    from t3s_nemo.config import ParallelConfig

    shape = PRESETS["llada2_mini"]
    c = qwen3.transformer_config(shape, ParallelConfig(ep=8), dtype=torch.float32, use_cpu_init=True)
    assert (c.num_layers, c.hidden_size, c.num_attention_heads, c.num_query_groups, c.kv_channels) == (20, 2048, 16, 4, 128)
    assert c.ffn_hidden_size == 5120 and c.moe_layer_freq == [0] + [1] * 19  # first_k_dense_replace = 1
    assert (c.num_moe_experts, c.moe_router_topk, c.moe_ffn_hidden_size) == (256, 8, 512)
    assert c.moe_shared_expert_intermediate_size == 512 and c.expert_model_parallel_size == 8
    assert c.moe_router_score_function == "sigmoid" and c.moe_router_enable_expert_bias
    assert (c.moe_router_num_groups, c.moe_router_group_topk, c.moe_router_topk_scaling_factor) == (8, 4, 2.5)
    assert c.moe_router_dtype == "fp32" and c.moe_token_dispatcher_type == "allgather" and not c.moe_grouped_gemm
    assert c.moe_router_load_balancing_type == "aux_loss" and c.moe_aux_loss_coeff == 1e-3
    assert c.qk_layernorm and not c.add_bias_linear and shape.rotary_percent == 0.5 and shape.rope_theta == 600_000
    # coefficient 0: no balancing loss at all (the expert bias still balances)
    c0 = qwen3.transformer_config(shape, ParallelConfig(), dtype=torch.float32, use_cpu_init=True, moe_aux_loss_coeff=0.0)
    assert c0.moe_router_load_balancing_type == "none"


def test_dense_presets_stay_dense():
    import torch

    from t3s_nemo.config import ParallelConfig

    c = qwen3.transformer_config(PRESETS["qwen3_8b"], ParallelConfig(), dtype=torch.float32, use_cpu_init=True)
    assert c.num_moe_experts is None


def test_moe_errors_name_the_key():
    assert "'parallel.ep'" in shape_error(["model.preset=tiny"], ep=2)  # dense model
    assert "'parallel.ep'" in shape_error(["model.preset=tiny_moe"], ep=3)  # 4 experts
    assert "'model.moe_topk'" in shape_error(["model.preset=tiny_moe", "model.moe_topk=5"])
    assert "'model.first_k_dense'" in shape_error(["model.preset=tiny_moe", "model.first_k_dense=2"])
    assert "'model.moe_ffn_hidden_size'" in shape_error(["model.preset=tiny", "model.num_experts=4"])
    assert "'model.num_experts'" in shape_error(["model.preset=tiny_moe", "model.num_experts=5"])  # 2 routing groups
    with pytest.raises(T3SError, match="'parallel.ep'"):
        load_config(None, ["parallel.ep=0"])
    with pytest.raises(T3SError, match="'model.moe_aux_loss_coeff'"):
        load_config(None, ["model.moe_aux_loss_coeff=-1"])
    cfg = load_config(None, ["model.preset=tiny_moe", "parallel.ep=4", "train.global_batch_size=4"])
    with pytest.raises(T3SError, match="'parallel.ep'"):
        check_parallel(cfg, 2)
    assert check_parallel(cfg, 4) == 4


def test_moe_at_tp2_needs_sequence_parallelism():
    from t3s_nemo.training.setup import build_model

    cfg = load_config(None, ["model.preset=tiny_moe", "parallel.tp=2"])
    with pytest.raises(T3SError, match="'parallel.sequence_parallel'"):
        build_model(cfg, 512, 128)


def test_moe_overrides_resize_the_preset():
    cfg = Config()
    cfg.model.preset = "tiny_moe"
    cfg.model.num_experts = 8
    cfg.model.moe_topk = 4
    shape = resolve_shape(cfg.model)
    assert shape.num_experts == 8 and shape.moe_topk == 4 and shape.moe_expert_bias  # routing from the preset
    check_shape(shape, 1, 1, ep=4)
    assert qwen3.num_parameters(shape, 512) > qwen3.num_parameters(PRESETS["tiny_moe"], 512)
    assert qwen3.num_parameters(shape, 512, active=True) < qwen3.num_parameters(shape, 512)
