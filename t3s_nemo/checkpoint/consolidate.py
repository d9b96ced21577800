"""Read a t3s checkpoint at any saved layout as one full (unsharded) state dict, in one process.

Two readers, which a test keeps equal on TP=2 and PP=2 snapshots:

- read_full_state: torch.distributed.checkpoint (DCP) reads megatron's torch_dist files directly, with no
  process group and no model: megatron stores every parameter under a global key and global shape
  (TP shards and PP stages are offsets into it; the transformer layers are stacked on a leading layer
  axis), so DCP's single-process load already is the TP=1/PP=1 tensor. About a second for a small model;
  HF export and the bottleneck's snapshot evaluation use it, in the calling process.
- load_full_state_dict: megatron builds the model and dist_checkpointing loads into it (the way training
  loads). Needs torch.distributed and megatron's parallel state, so it runs in a process of its own;
  `python -m t3s_nemo.checkpoint.consolidate` and MoE shapes use it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from t3s_nemo.checkpoint import weights as W
from t3s_nemo.config import Config
from t3s_nemo.model.qwen3 import Shape


def config_for(marker: dict) -> Config:
    """A single-process fp32 Config that rebuilds the checkpoint's model, on megatron-core's local spec
    (the parameter names consolidation maps; recipes that run the model use run_config)."""
    from t3s_nemo.errors import T3SError
    from t3s_nemo.model.qwen3 import OVERRIDABLE, PRESETS, resolve_shape

    cfg = Config()
    shape = marker.get("shape")
    if not isinstance(shape, dict):
        raise T3SError(f"checkpoint marker (t3s.json) of {marker.get('source') or 'the checkpoint'} has no model "
                       "'shape': damaged, or written by something else than t3s")
    if shape.get("num_experts", 0):
        # MoE: the routing settings are not overridable keys; they come from the preset, checked below
        cfg.model.preset = marker.get("preset", "")
        if cfg.model.preset not in PRESETS or not PRESETS[cfg.model.preset].is_moe:
            raise T3SError(f"checkpoint marker: MoE shape of unknown preset '{cfg.model.preset}'")
    else:
        cfg.model.preset = "tiny"  # the overrides below set every field of the preset that matters
    for k in OVERRIDABLE:
        if k in shape:
            setattr(cfg.model, k, shape[k])
    if shape.get("num_experts", 0):
        rebuilt = resolve_shape(cfg.model)
        diff = [k for k in shape if hasattr(rebuilt, k) and getattr(rebuilt, k) != shape[k]]
        if diff:
            raise T3SError(f"checkpoint marker: preset '{cfg.model.preset}' no longer has the saved "
                           f"{', '.join(diff)}")
    cfg.model.spec = "local"
    cfg.train.precision = "fp32"
    return cfg


def run_config(marker: dict, overrides: list[str]) -> Config:
    """config_for, set up to run the model (profile, analyze, the megatron sampler): the training dtype
    and attention (model.spec=auto: TE or sdpa; the local spec is quadratic in memory), then the user's
    key=value overrides."""
    from t3s_nemo.config import replace

    cfg = config_for(marker)
    cfg.train.precision = "auto"
    cfg.model.spec = "auto"
    return replace(cfg, dict(o.split("=", 1) for o in overrides)) if overrides else cfg


# megatron's checkpoint keys name the fused layer norms the way Transformer Engine's spec does; its local
# spec maps them back (sharded_state_dict_keys_map). These are the local names.
_CKPT_TO_LOCAL = {"self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
                  "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight"}
_LAYER_KEYS = ("input_layernorm.weight", "self_attention.linear_qkv.weight", "self_attention.q_layernorm.weight",
               "self_attention.k_layernorm.weight", "self_attention.linear_proj.weight", "pre_mlp_layernorm.weight",
               "mlp.linear_fc1.weight", "mlp.linear_fc2.weight")


def expected_keys(shape: Shape) -> list[str]:
    """The local-spec state dict keys of a dense GPTModel of this shape (TP=1, PP=1)."""
    keys = ["embedding.word_embeddings.weight", "decoder.final_layernorm.weight"]
    if not shape.tie_embeddings:
        keys.append("output_layer.weight")
    return keys + [f"decoder.layers.{i}.{k}" for i in range(shape.num_layers) for k in _LAYER_KEYS]


def read_full_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict, Shape]:
    """(state dict of the TP=1/PP=1 GPTModel, local-spec names, marker, shape) of a dense checkpoint, via DCP.

    No torch.distributed, no megatron import, host memory only.
    """
    import warnings

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from t3s_nemo.errors import T3SError
    from t3s_nemo.model.qwen3 import resolve_shape

    path = Path(path)
    marker = W.read_marker(path)
    if (marker.get("shape") or {}).get("num_experts", 0):
        raise T3SError(f"{path}: an MoE checkpoint; read it with load_full_state_dict")
    shape = resolve_shape(config_for(marker).model)
    try:
        reader = dcp.FileSystemReader(str(path))
        meta = reader.read_metadata()
    except Exception as e:
        raise T3SError(f"{path}: not a readable torch_dist checkpoint ({type(e).__name__}: {e})") from None
    want = set(expected_keys(shape))
    stacked = {k: v for k, v in meta.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)
               and not k.startswith("optimizer") and "_extra_state" not in k}
    buffers = {k: torch.empty(v.size, dtype=v.properties.dtype) for k, v in stacked.items()
               if k.startswith("decoder.layers.") or k in want}
    with warnings.catch_warnings():  # "torch.distributed is ... uninitialized, assuming ... a single process"
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(buffers, storage_reader=reader, no_dist=True)
    state: dict[str, torch.Tensor] = {}
    for key in list(buffers):
        t = buffers.pop(key)  # split one stacked tensor at a time: peak memory is the model plus one of them
        if not key.startswith("decoder.layers."):
            state[key] = t
            continue
        name = key.removeprefix("decoder.layers.")
        name = _CKPT_TO_LOCAL.get(name, name)
        if t.shape[0] != shape.num_layers:
            raise T3SError(f"{path}: '{key}' stacks {t.shape[0]} layers, the marker's shape has {shape.num_layers}")
        for i in range(shape.num_layers):
            state[f"decoder.layers.{i}.{name}"] = t[i].clone()
    missing, extra = want - state.keys(), state.keys() - want
    if missing or extra:
        raise T3SError(f"{path}: checkpoint tensors do not match a dense {marker.get('preset')} model "
                       f"(missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]})")
    return state, marker, shape


def load_full_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict, Shape]:
    """(state dict of the TP=1/PP=1 GPTModel, marker, shape) for the checkpoint at path."""
    from t3s_nemo.training.distributed import init_distributed, init_model_parallel
    from t3s_nemo.training.setup import build_model

    marker = W.read_marker(path)
    cfg = config_for(marker)
    init_distributed()
    init_model_parallel(cfg.parallel)
    vocab = marker["padded_vocab_size"]
    bundle = build_model(cfg, vocab, 128)  # the checkpoint's own rows (setup.vocab_rows)
    W.load_weights(bundle.chunks, path)
    state = {k: v.detach().clone() for k, v in bundle.chunks[0].state_dict().items() if not k.endswith("_extra_state")}
    return state, marker, bundle.shape


def main(argv: list[str] | None = None) -> None:
    """python -m t3s_nemo.checkpoint.consolidate CKPT OUT.pt [CKPT OUT.pt ...]: full state dicts to .pt files."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    for ckpt, out in zip(args[0::2], args[1::2]):
        state, _, _ = load_full_state_dict(ckpt)
        torch.save(state, out)


if __name__ == "__main__":
    main()
