"""Hugging Face Qwen3 <-> t3s (megatron-core) checkpoints.

Megatron-Bridge's AutoBridge does this conversion, but it imports Transformer Engine and does not
install on CPU machines (docs/engine.md), so the Qwen3 mapping is written here: megatron's fused QKV
(rows grouped per query group: the group's query heads, then its key head, then its value head), the
fused [gate; up] fc1, QK-norm, and tied embeddings. Export reads the checkpoint's global tensors with
torch.distributed.checkpoint in the calling process (checkpoint/consolidate.py: read_full_state), so it
needs neither megatron's parallel state nor a GPU; import builds the TP=1/PP=1 megatron model in one
process, and dist_checkpointing reshards to any layout when a run loads the result.

    python -m t3s_nemo.model.hf export CKPT OUT_DIR [--tokenizer DIR] [--dtype bf16|fp32]
    python -m t3s_nemo.model.hf import HF_DIR OUT_CKPT
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

import torch

from t3s_nemo.errors import T3SError
from t3s_nemo.model.qwen3 import Shape

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "vocab.json", "merges.txt", "added_tokens.json")


def _layer_map(i: int) -> dict[str, str]:
    m, h = f"decoder.layers.{i}.", f"model.layers.{i}."
    return {
        m + "input_layernorm.weight": h + "input_layernorm.weight",
        m + "self_attention.q_layernorm.weight": h + "self_attn.q_norm.weight",
        m + "self_attention.k_layernorm.weight": h + "self_attn.k_norm.weight",
        m + "self_attention.linear_proj.weight": h + "self_attn.o_proj.weight",
        m + "pre_mlp_layernorm.weight": h + "post_attention_layernorm.weight",
        m + "mlp.linear_fc2.weight": h + "mlp.down_proj.weight",
    }


def megatron_to_hf(state: dict[str, torch.Tensor], shape: Shape) -> dict[str, torch.Tensor]:
    """Full (TP=1, PP=1) megatron GPTModel state dict (local-spec names) -> HF Qwen3ForCausalLM names."""
    nh, ng, hd = shape.num_attention_heads, shape.num_query_groups, shape.head_dim
    per = nh // ng
    out = {"model.embed_tokens.weight": state["embedding.word_embeddings.weight"],
           "model.norm.weight": state["decoder.final_layernorm.weight"]}
    if not shape.tie_embeddings:
        out["lm_head.weight"] = state["output_layer.weight"]
    for i in range(shape.num_layers):
        for m, h in _layer_map(i).items():
            out[h] = state[m]
        qkv = state[f"decoder.layers.{i}.self_attention.linear_qkv.weight"]
        qkv = qkv.view(ng, (per + 2) * hd, -1)
        h = f"model.layers.{i}."
        out[h + "self_attn.q_proj.weight"] = qkv[:, : per * hd].reshape(nh * hd, -1)
        out[h + "self_attn.k_proj.weight"] = qkv[:, per * hd : (per + 1) * hd].reshape(ng * hd, -1)
        out[h + "self_attn.v_proj.weight"] = qkv[:, (per + 1) * hd :].reshape(ng * hd, -1)
        gate, up = state[f"decoder.layers.{i}.mlp.linear_fc1.weight"].chunk(2, dim=0)
        out[h + "mlp.gate_proj.weight"] = gate
        out[h + "mlp.up_proj.weight"] = up
    return {k: v.contiguous() for k, v in out.items()}


def hf_to_megatron(hf: dict[str, torch.Tensor], shape: Shape) -> dict[str, torch.Tensor]:
    """HF Qwen3ForCausalLM state dict -> full megatron GPTModel state dict (local-spec names)."""
    nh, ng, hd = shape.num_attention_heads, shape.num_query_groups, shape.head_dim
    per = nh // ng

    def need(key: str) -> torch.Tensor:
        if key not in hf:
            raise T3SError(f"Hugging Face checkpoint has no tensor '{key}' (is it a Qwen3 model?)")
        return hf[key]

    out = {"embedding.word_embeddings.weight": need("model.embed_tokens.weight"),
           "decoder.final_layernorm.weight": need("model.norm.weight")}
    if not shape.tie_embeddings:
        out["output_layer.weight"] = need("lm_head.weight")
    for i in range(shape.num_layers):
        for m, h in _layer_map(i).items():
            out[m] = need(h)
        h = f"model.layers.{i}."
        q = need(h + "self_attn.q_proj.weight").view(ng, per * hd, -1)
        k = need(h + "self_attn.k_proj.weight").view(ng, hd, -1)
        v = need(h + "self_attn.v_proj.weight").view(ng, hd, -1)
        out[f"decoder.layers.{i}.self_attention.linear_qkv.weight"] = torch.cat([q, k, v], dim=1).reshape(-1, q.shape[-1])
        out[f"decoder.layers.{i}.mlp.linear_fc1.weight"] = torch.cat(
            [need(h + "mlp.gate_proj.weight"), need(h + "mlp.up_proj.weight")], dim=0)
    return {k: v.contiguous() for k, v in out.items()}


def shape_from_hf_config(cfg: dict, where: Path) -> Shape:
    if not isinstance(cfg, dict):
        raise T3SError(f"{where}/config.json: expected a JSON object, got {type(cfg).__name__}")
    if cfg.get("model_type") not in ("qwen3",):
        raise T3SError(f"{where}/config.json: model_type '{cfg.get('model_type')}' is not supported (qwen3)")
    for key in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                "head_dim", "max_position_embeddings"):
        v = cfg.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise T3SError(f"{where}/config.json: field '{key}' must be a positive integer, got {v!r}")
    for key in ("rope_theta", "rms_norm_eps"):
        v = cfg.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
            raise T3SError(f"{where}/config.json: field '{key}' must be a positive number, got {v!r}")
    try:
        return Shape(
            num_layers=cfg["num_hidden_layers"], hidden_size=cfg["hidden_size"],
            ffn_hidden_size=cfg["intermediate_size"], num_attention_heads=cfg["num_attention_heads"],
            num_query_groups=cfg["num_key_value_heads"],
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"],
            rope_theta=float(cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 1e6))),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 40960)),
        )
    except KeyError as e:
        raise T3SError(f"{where}/config.json: missing field {e}") from None


def hf_config(shape: Shape, vocab_size: int, dtype: str, tok) -> dict:
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": vocab_size,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.ffn_hidden_size,
        "num_hidden_layers": shape.num_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_query_groups,
        "head_dim": shape.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": shape.max_position_embeddings,
        "rms_norm_eps": shape.norm_eps,
        "rope_theta": shape.rope_theta,
        "rope_scaling": None,
        "tie_word_embeddings": shape.tie_embeddings,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": shape.num_layers,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": dtype,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }


def _host_only() -> None:
    """Convert on the host: a whole model in fp32 does not fit one GPU at 8B+ (and needs no GPU)."""
    import os

    if not torch.cuda.is_initialized():
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def export(ckpt: str | Path, out: str | Path, tokenizer: Optional[str | Path] = None, dtype: str = "auto",
           overwrite: bool = False) -> Path:
    """t3s checkpoint (any layout) -> HF directory: model.safetensors, config.json, generation_config.json, tokenizer."""
    from safetensors.torch import save_file

    from t3s_nemo.checkpoint import weights as W
    from t3s_nemo.checkpoint.consolidate import read_full_state
    from t3s_nemo.data.tokenizer import fingerprint, load_tokenizer, stop_token_ids
    from t3s_nemo.io import atomic_write_json, check_replaceable, open_permissions, staged_dir

    out = Path(out)
    if dtype not in ("auto", "bf16", "bfloat16", "fp32", "float32"):
        raise T3SError(f"--dtype {dtype}: expected auto, bf16 or fp32")
    check_replaceable(out, [ckpt, tokenizer], overwrite)
    early = W.read_marker(ckpt)
    check_replaceable(out, [ckpt, tokenizer or early.get("tokenizer")], overwrite)
    if (early.get("shape") or {}).get("num_experts", 0):
        raise T3SError(f"{ckpt}: an MoE ({early.get('preset')}) checkpoint; Hugging Face export covers dense Qwen3 only")
    # torch.distributed.checkpoint reads the shards on the host, in this process (no megatron, no GPU), so
    # callers such as the bottleneck export every snapshot without starting a process per snapshot
    state, marker, shape = read_full_state(ckpt)
    if marker.get("objective", "ar") != "ar":
        raise T3SError(f"{ckpt}: a {marker['objective']} checkpoint is not a Qwen3ForCausalLM")
    if shape.rotary_percent != 1.0:
        raise T3SError(f"{ckpt}: RoPE rotates {shape.rotary_percent:g} of each head (model.rotary_percent); "
                       "Qwen3ForCausalLM rotates all of it")
    tok_dir = Path(tokenizer or marker.get("tokenizer") or "")
    if not (tok_dir / "tokenizer_config.json").is_file() and not (tok_dir / "tokenizer.json").is_file():
        if tokenizer:
            raise T3SError(f"--tokenizer {tokenizer}: not a tokenizer directory (no tokenizer_config.json or "
                           "tokenizer.json)")
        raise T3SError(f"{ckpt}: its tokenizer ({tok_dir}) is not there any more; pass --tokenizer DIR")
    tok = load_tokenizer(tok_dir)
    if marker.get("tokenizer_fingerprint") and fingerprint(tok) != marker["tokenizer_fingerprint"]:
        raise T3SError(f"{tok_dir}: not the tokenizer this checkpoint was trained with (fingerprint differs)")
    if dtype == "auto":
        dtype = "bfloat16" if marker.get("dtype") == "bfloat16" else "float32"
    torch_dtype = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32}[dtype]
    dtype = "bfloat16" if torch_dtype == torch.bfloat16 else "float32"
    hf = {k: v.to(torch_dtype) for k, v in megatron_to_hf(state, shape).items()}
    vocab = hf["model.embed_tokens.weight"].shape[0]
    with staged_dir(out, overwrite=overwrite, inputs=[ckpt, tok_dir]) as tmp:
        save_file(hf, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        # safetensors writes its file 0600; an export is shared (a cluster's other users, a vLLM server)
        open_permissions(tmp / "model.safetensors")
        atomic_write_json(tmp / "config.json", hf_config(shape, vocab, dtype, tok))
        atomic_write_json(tmp / "generation_config.json", {
            # every token that ends a turn (tokenizer.stop_token_ids): transformers and vLLM stop at each
            "bos_token_id": tok.bos_token_id, "eos_token_id": _one_or_list(stop_token_ids(tok)),
            "pad_token_id": tok.pad_token_id,
            # the paper's evaluation sampling, as `t3s eval` samples: no top-k. 0, not null: transformers
            # fills a null with its default 50; vLLM takes 0 as off since 0.9 (the eval extra's minimum)
            "do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 0,
        })
        for name in TOKENIZER_FILES:
            if (tok_dir / name).is_file():
                shutil.copy2(tok_dir / name, tmp / name)
        atomic_write_json(tmp / "t3s_export.json", {"source": str(ckpt), "step": marker.get("step"),
                                                    "tokenizer_fingerprint": marker.get("tokenizer_fingerprint")})
    return out


def read_hf_state(hf_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        if any(hf_dir.glob("*.bin")):
            raise T3SError(f"{hf_dir}: only PyTorch .bin weights; save it with safetensors "
                           "(model.save_pretrained(dir, safe_serialization=True))")
        raise T3SError(f"{hf_dir}: no *.safetensors weights")
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def _one_or_list(ids: list[int]):
    return ids[0] if len(ids) == 1 else ids


def _pad_vocab(state: dict[str, torch.Tensor], multiple: int) -> int:
    """Pad embedding (and output) rows with zeros to Megatron's vocabulary multiple; returns the size."""
    rows = state["embedding.word_embeddings.weight"].shape[0]
    padded = -(-rows // multiple) * multiple
    for key in ("embedding.word_embeddings.weight", "output_layer.weight"):
        if key in state and padded != rows:
            w = state[key]
            state[key] = torch.cat([w, w.new_zeros(padded - rows, w.shape[1])])
    return padded


def import_(hf_dir: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """HF Qwen3 directory -> t3s weights checkpoint (loadable as model.init at any layout)."""
    from t3s_nemo.checkpoint import weights as W
    from t3s_nemo.checkpoint.consolidate import config_for
    from t3s_nemo.data.tokenizer import fingerprint, load_tokenizer
    from t3s_nemo.io import read_json
    from t3s_nemo.training.distributed import init_distributed, init_model_parallel
    from t3s_nemo.training.setup import build_model

    from t3s_nemo.io import check_replaceable

    hf_dir, out = Path(hf_dir), Path(out)
    check_replaceable(out, [hf_dir], overwrite)
    _host_only()
    cfg_json = read_json(hf_dir / "config.json", "Hugging Face config.json")
    shape = shape_from_hf_config(cfg_json, hf_dir)
    tok = load_tokenizer(hf_dir)
    try:
        state = hf_to_megatron(read_hf_state(hf_dir), shape)
    except RuntimeError as e:  # attention weights that do not fit the heads config.json declares
        raise T3SError(f"{hf_dir}: weights do not match config.json ({str(e).splitlines()[0]})") from None
    vocab = _pad_vocab(state, multiple=128)
    marker = {"kind": W.KIND_WEIGHTS, "step": 0, "preset": "imported",
              "shape": {k: getattr(shape, k) for k in shape.__dataclass_fields__},
              "padded_vocab_size": vocab, "tokenizer_fingerprint": fingerprint(tok), "tokenizer": str(hf_dir),
              "dtype": "bfloat16" if state["embedding.word_embeddings.weight"].dtype == torch.bfloat16 else "float32",
              "objective": "ar", "source": os.path.abspath(hf_dir)}
    cfg = config_for(marker)
    init_distributed()
    init_model_parallel(cfg.parallel)
    bundle = build_model(cfg, vocab, 128)
    model = bundle.chunks[0]
    missing = [k for k in model.state_dict() if not k.endswith("_extra_state") and k not in state]
    if missing:
        raise T3SError(f"{hf_dir}: conversion left parameters unset: {', '.join(missing[:5])}")
    for name, p in model.named_parameters():
        if tuple(state[name].shape) != tuple(p.shape):
            raise T3SError(f"{hf_dir}: tensor for {name} has shape {tuple(state[name].shape)}, config.json implies "
                           f"{tuple(p.shape)}")
    dtype = state["embedding.word_embeddings.weight"].dtype
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(state.pop(name).to(p.dtype))  # each HF tensor freed once copied
    if dtype == torch.bfloat16:  # saved as Qwen3 ships (bf16 -> fp32 -> bf16 is exact): half the disk of fp32
        model.to(torch.bfloat16)
    tmp = out.with_name(f".{out.name}.tmp")
    W.save_weights(bundle.chunks, tmp, marker)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def main(argv: Optional[list[str]] = None) -> None:
    import argparse
    import sys

    from t3s_nemo.console import console, print_error

    p = argparse.ArgumentParser(prog="python -m t3s_nemo.model.hf", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("ckpt")
    e.add_argument("out")
    e.add_argument("--tokenizer")
    e.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp32"))
    e.add_argument("--overwrite", action="store_true")
    i = sub.add_parser("import")
    i.add_argument("hf_dir")
    i.add_argument("out")
    i.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    try:
        if a.cmd == "export":
            path = export(a.ckpt, a.out, a.tokenizer, a.dtype, a.overwrite)
        else:
            path = import_(a.hf_dir, a.out, a.overwrite)
    except T3SError as err:
        print_error(err)
        sys.exit(1)
    console.print(f"wrote {path}")
    print(json.dumps({"output": str(path)}))


if __name__ == "__main__":
    main()
