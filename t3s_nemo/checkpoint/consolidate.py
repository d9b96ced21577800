"""Read a t3s checkpoint at any saved layout as one full (unsharded) state dict, in one process.

Used by HF export and by tests that compare weights across parallel layouts ("after gathering").
"""

from __future__ import annotations

from pathlib import Path

import torch

from t3s_nemo.checkpoint import weights as W
from t3s_nemo.config import Config
from t3s_nemo.model.qwen3 import Shape


def config_for(marker: dict) -> Config:
    """A single-process Config that rebuilds the checkpoint's model."""
    from t3s_nemo.errors import T3SError
    from t3s_nemo.model.qwen3 import OVERRIDABLE, PRESETS, resolve_shape

    cfg = Config()
    shape = marker["shape"]
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


def load_full_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict, Shape]:
    """(state dict of the TP=1/PP=1 GPTModel, marker, shape) for the checkpoint at path."""
    from t3s_nemo.training.distributed import init_distributed, init_model_parallel
    from t3s_nemo.training.setup import build_model

    marker = W.read_marker(path)
    cfg = config_for(marker)
    init_distributed()
    init_model_parallel(cfg.parallel)
    vocab = marker["padded_vocab_size"]
    # build_model pads the vocabulary again; the stored size is already a multiple of 128
    bundle = build_model(cfg, vocab, 128)
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
