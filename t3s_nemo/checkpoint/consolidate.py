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
    cfg = Config()
    shape = marker["shape"]
    for k in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
              "head_dim", "rope_theta", "tie_embeddings"):
        setattr(cfg.model, k, shape[k])
    cfg.model.preset = "tiny"  # the shape above overrides every field of the preset
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
