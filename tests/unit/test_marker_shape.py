"""A checkpoint's marker rebuilds its model's whole shape: the context length, the norm epsilon and the
RoPE fraction come back from the marker too, not from the `tiny` preset the rebuild starts from. Export
and the samplers read them: a Qwen3-8B snapshot exported with tiny's 4096 positions would cap every
vLLM / transformers answer at 4096 tokens."""

from __future__ import annotations

import dataclasses

import pytest

from t3s_nemo.checkpoint.consolidate import config_for
from t3s_nemo.model.hf import hf_config
from t3s_nemo.model.qwen3 import PRESETS, resolve_shape

# an imported model whose config.json differs from every preset in the fields no preset key names
IMPORTED = dataclasses.replace(PRESETS["qwen3_0_6b"], norm_eps=1e-5, max_position_embeddings=32768,
                               rotary_percent=0.5)


@pytest.mark.parametrize("name", [*sorted(PRESETS), "imported"])
def test_marker_rebuilds_the_saved_shape(name):
    saved = dataclasses.asdict(IMPORTED if name == "imported" else PRESETS[name])
    marker = {"preset": name, "shape": saved}
    assert dataclasses.asdict(resolve_shape(config_for(marker).model)) == saved


def test_export_config_of_a_qwen3_8b_snapshot_declares_qwen3s_context(demo_tokenizer):
    marker = {"preset": "qwen3_8b", "shape": dataclasses.asdict(PRESETS["qwen3_8b"])}
    cfg = hf_config(resolve_shape(config_for(marker).model), 151936, "bfloat16", demo_tokenizer)
    assert cfg["max_position_embeddings"] == 40960 != PRESETS["tiny"].max_position_embeddings
    marker = {"preset": "imported", "shape": dataclasses.asdict(IMPORTED)}
    cfg = hf_config(resolve_shape(config_for(marker).model), 151936, "bfloat16", demo_tokenizer)
    assert (cfg["max_position_embeddings"], cfg["rms_norm_eps"]) == (32768, 1e-5)


def test_every_presets_marker_rebuilds_a_valid_config():
    """Profile, export and RRT rebuild a checkpoint's config from its marker's shape: a dense shape's zero
    MoE fields must pass the config's own checks (a check on them once stopped the demo at its profile)."""
    import dataclasses

    from t3s_nemo.checkpoint.consolidate import config_for, run_config
    from t3s_nemo.config import validate
    from t3s_nemo.model.qwen3 import PRESETS

    for name, shape in PRESETS.items():
        marker = {"kind": "weights", "preset": name, "shape": dataclasses.asdict(shape)}
        cfg = config_for(marker)
        validate(cfg)
        assert cfg.model.num_layers == shape.num_layers, name
        assert run_config(marker, ["parallel.tp=1"]).model.num_layers == shape.num_layers, name
