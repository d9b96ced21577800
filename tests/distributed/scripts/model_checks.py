"""Single-process checks on a real megatron GPTModel (CPU mode); prints one JSON object.

Run by tests/distributed/test_model.py in a subprocess so the CPU mode and megatron's parallel state
stay out of the pytest process. Every check runs for each variant of argv[2] (default
sdpa_thd,sdpa,local: torch's scaled_dot_product_attention with THD packing, the same with the
block-diagonal mask it takes for these short bins, and megatron-core's local spec; te on a GPU with
Transformer Engine), and each variant is compared with the last one on the same weights. On a CUDA
machine everything runs on the GPU (fp32).
"""

import json
import sys

import torch


def main() -> None:
    from t3s_nemo.config import Config
    from t3s_nemo.data.dataset import PackedBins, collate
    from t3s_nemo.data.packed import PackedDataset
    from t3s_nemo.dllm.training import model_inputs
    from t3s_nemo.training.distributed import init_distributed, init_model_parallel
    from t3s_nemo.training.loss import batch_to_model_inputs, masked_token_loss, model_takes_thd
    from t3s_nemo.training.setup import build_model, vocab_rows

    packed = PackedDataset(sys.argv[1])
    specs = (sys.argv[2] if len(sys.argv) > 2 else "sdpa_thd,sdpa,local").split(",")
    init_distributed()
    bins = PackedBins(packed)
    cpu_batch = collate([bins[0], bins[1]])  # two bins: THD flattens them into one sequence
    out = {}
    models = {}
    for spec in specs:
        cfg = Config()
        cfg.train.precision = "fp32"
        cfg.model.spec = spec.removesuffix("_thd")
        init_model_parallel(cfg.parallel)
        bundle = build_model(cfg, vocab_rows(packed.vocab_size, cfg.parallel.tp), packed.seq_length)
        model = models[spec] = bundle.chunks[0]
        device = next(model.parameters()).device
        out["device"] = device.type
        batch = {k: v.to(device) for k, v in cpu_batch.items()}
        thd = bundle.packed_thd or spec.endswith("_thd")
        r = out[spec] = {"packed_thd": bundle.packed_thd, "detected_thd": model_takes_thd(model)}

        # 1. packed vs unpacked: each example of bin 0 alone (its own causal mask) gives the same per-token loss
        with torch.no_grad():
            packed_loss = model(**batch_to_model_inputs(batch, thd))[0]
            diffs = []
            for k, seq in enumerate(packed.read_bin(0)["tokens"]):
                start = int(batch["cu_seqlens"][k])
                n = len(seq)
                tokens = torch.as_tensor(seq, dtype=torch.long, device=device).unsqueeze(0)
                labels = torch.roll(tokens, -1, dims=1)
                mask = ~torch.ones(n, n, dtype=torch.bool, device=device).tril()
                alone = model(tokens, torch.arange(n, device=device).unsqueeze(0), mask.view(1, 1, n, n),
                              labels=labels)[0]
                diffs.append(float((alone[: n - 1] - packed_loss[start : start + n - 1]).abs().max()))
        r["packed_vs_unpacked_max_abs_diff"] = max(diffs)
        r["examples_compared"] = len(diffs)

        # 2. labels under a zero weight do not change the loss or the gradients
        def loss_and_grads(b):
            model.zero_grad(set_to_none=True)
            per_tok = model(**batch_to_model_inputs(b, thd))
            loss_sum, count, _ = masked_token_loss(per_tok, b["loss_weight"])
            (loss_sum / count.clamp(min=1)).backward()
            return float(loss_sum), per_tok.detach().reshape(-1), [p.grad.clone() for p in model.parameters()]

        ref_loss, r["per_token"], r["grads"] = loss_and_grads(batch)
        changed = {k: v.clone() for k, v in batch.items()}
        masked = changed["loss_weight"] == 0
        changed["labels"][masked] = (changed["labels"][masked] + 7) % packed.vocab_size
        new_loss, _, new_grads = loss_and_grads(changed)
        r["masked_labels_loss_diff"] = abs(new_loss - ref_loss)
        r["masked_labels_grad_diff"] = max(float((a - b).abs().max()) for a, b in zip(r["grads"], new_grads))
        r["masked_positions"] = int(masked.sum())

        # 3. an all-masked micro-batch: finite zero loss, zero gradient
        zero = {k: v.clone() for k, v in batch.items()}
        zero["loss_weight"].zero_()
        model.zero_grad(set_to_none=True)
        per_tok = model(**batch_to_model_inputs(zero, thd))
        loss_sum, count, _ = masked_token_loss(per_tok, zero["loss_weight"])
        (loss_sum / count.clamp(min=1)).backward()
        r["all_masked_loss"] = float(loss_sum)
        r["all_masked_count"] = int(count)
        r["all_masked_grad_max"] = max(float(p.grad.abs().max()) for p in model.parameters() if p.grad is not None)
        r["all_masked_grads_finite"] = all(bool(torch.isfinite(p.grad).all()) for p in model.parameters()
                                           if p.grad is not None)

        # 4. bidirectional (the dLLM objective) on the same weights
        bi = build_model(cfg, vocab_rows(packed.vocab_size, cfg.parallel.tp), packed.seq_length, bidirectional=True).chunks[0]
        bi.load_state_dict(model.state_dict())
        with torch.no_grad():
            r["bidirectional"] = bi(**model_inputs(batch, batch["tokens"], thd)).reshape(-1)
        # a token's bidirectional loss depends on later tokens of its own example only
        later = batch["tokens"].clone()
        first_end = int(batch["cu_seqlens"][1])
        later[0, first_end - 1] = (later[0, first_end - 1] + 3) % packed.vocab_size
        with torch.no_grad():
            moved = bi(**model_inputs(batch, later, thd)).reshape(-1)
        r["bidirectional_sees_later_token"] = float((moved[: first_end - 2] - r["bidirectional"][: first_end - 2]).abs().max())
        r["bidirectional_other_examples_diff"] = float((moved[first_end:] - r["bidirectional"][first_end:]).abs().max())

    # 5. each spec agrees with the last (the reference) on the same weights (all built from train.seed):
    # per-token losses, gradients, bidirectional losses
    ref = specs[-1]
    for spec in specs[:-1]:
        s, l, key = out[spec], out[ref], f"{spec}_vs_{ref}"
        out[f"{key}_weights_equal"] = all(torch.equal(a, b) for a, b in zip(models[spec].parameters(),
                                                                          models[ref].parameters()))
        out[f"{key}_loss_diff"] = float((s["per_token"] - l["per_token"]).abs().max())
        out[f"{key}_grad_diff"] = max(float((a - b).abs().max()) for a, b in zip(s["grads"], l["grads"]))
        out[f"{key}_bidirectional_diff"] = float((s["bidirectional"] - l["bidirectional"]).abs().max())
    for r in out.values():
        if isinstance(r, dict):
            for k in ("per_token", "grads", "bidirectional"):
                r.pop(k)
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
