"""HF Qwen3 -> t3s import -> megatron logits, and t3s -> HF export -> transformers logits. Prints JSON."""

import json
import sys
from pathlib import Path

import torch


def megatron_logits(model, tokens):
    n = tokens.shape[1]
    mask = ~torch.ones(n, n, dtype=torch.bool).tril()
    with torch.no_grad():
        return model(tokens, torch.arange(n).unsqueeze(0), mask.view(1, 1, n, n)).float()


def hf_logits(path, tokens):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        return m(tokens).logits.float(), m


def main():
    from t3s_nemo.checkpoint import weights as W
    from t3s_nemo.checkpoint.consolidate import config_for
    from t3s_nemo.model.hf import export, import_
    from t3s_nemo.training.setup import build_model

    hf_dir, work = Path(sys.argv[1]), Path(sys.argv[2])
    tokens = torch.randint(0, 454, (2, 24), generator=torch.Generator().manual_seed(0))
    ref, hf_model = hf_logits(hf_dir, tokens)

    ckpt = import_(hf_dir, work / "imported")
    marker = W.read_marker(ckpt)
    bundle = build_model(config_for(marker), marker["padded_vocab_size"], 128)
    W.load_weights(bundle.chunks, ckpt)
    mine = megatron_logits(bundle.chunks[0], tokens)[..., : ref.shape[-1]]
    out = {"import_max_abs_diff": float((mine - ref).abs().max())}

    exported = export(ckpt, work / "exported")
    back, back_model = hf_logits(exported, tokens)
    out["export_max_abs_diff"] = float((back[..., : mine.shape[-1]] - mine).abs().max())
    a, b = hf_model.state_dict(), back_model.state_dict()
    out["roundtrip_same_keys"] = sorted(a) == sorted(b)
    out["roundtrip_max_abs_diff"] = max(float((a[k] - b[k]).abs().max()) for k in a)
    out["files"] = sorted(p.name for p in exported.iterdir())
    gen = json.loads((exported / "generation_config.json").read_text())
    out["generation"] = [gen["temperature"], gen["top_p"], gen["eos_token_id"]]
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
