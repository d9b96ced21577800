"""Single-process checks on a real megatron GPTModel (CPU mode); prints one JSON object.

Run by tests/distributed/test_model.py in a subprocess so the CPU mode and megatron's parallel state
stay out of the pytest process.
"""

import json
import sys

import torch


def main() -> None:
    from t3s_nemo.config import Config
    from t3s_nemo.data.dataset import PackedBins, collate
    from t3s_nemo.data.packed import PackedDataset
    from t3s_nemo.training.distributed import init_distributed, init_model_parallel
    from t3s_nemo.training.loss import batch_to_model_inputs, masked_token_loss
    from t3s_nemo.training.setup import build_model

    packed = PackedDataset(sys.argv[1])
    init_distributed()
    cfg = Config()
    cfg.train.precision = "fp32"
    init_model_parallel(cfg.parallel)
    bundle = build_model(cfg, packed.vocab_size, packed.seq_length)
    model = bundle.chunks[0]
    bins = PackedBins(packed)
    out = {}

    # 1. packed vs unpacked: each example of bin 0 alone (its own causal mask) gives the same per-token loss
    batch = collate([bins[0]])
    with torch.no_grad():
        packed_loss = model(**batch_to_model_inputs(batch, use_te=False))[0]
        diffs = []
        for k, seq in enumerate(packed.read_bin(0)["tokens"]):
            start = int(batch["cu_seqlens"][k])
            n = len(seq)
            tokens = torch.as_tensor(seq, dtype=torch.long).unsqueeze(0)
            labels = torch.roll(tokens, -1, dims=1)
            mask = ~torch.ones(n, n, dtype=torch.bool).tril()
            alone = model(tokens, torch.arange(n).unsqueeze(0), mask.view(1, 1, n, n), labels=labels)[0]
            diffs.append(float((alone[: n - 1] - packed_loss[start : start + n - 1]).abs().max()))
    out["packed_vs_unpacked_max_abs_diff"] = max(diffs)
    out["examples_compared"] = len(diffs)

    # 2. labels under a zero weight do not change the loss or the gradients
    def loss_and_grads(b):
        model.zero_grad(set_to_none=True)
        per_tok = model(**batch_to_model_inputs(b, use_te=False))
        loss_sum, count, _ = masked_token_loss(per_tok, b["loss_weight"])
        (loss_sum / count.clamp(min=1)).backward()
        return float(loss_sum), [p.grad.clone() for p in model.parameters()]

    ref_loss, ref_grads = loss_and_grads(batch)
    changed = {k: v.clone() for k, v in batch.items()}
    masked = changed["loss_weight"] == 0
    changed["labels"][masked] = (changed["labels"][masked] + 7) % packed.vocab_size
    new_loss, new_grads = loss_and_grads(changed)
    out["masked_labels_loss_diff"] = abs(new_loss - ref_loss)
    out["masked_labels_grad_diff"] = max(float((a - b).abs().max()) for a, b in zip(ref_grads, new_grads))
    out["masked_positions"] = int(masked.sum())

    # 3. an all-masked micro-batch: finite zero loss, zero gradient
    zero = {k: v.clone() for k, v in batch.items()}
    zero["loss_weight"].zero_()
    model.zero_grad(set_to_none=True)
    per_tok = model(**batch_to_model_inputs(zero, use_te=False))
    loss_sum, count, _ = masked_token_loss(per_tok, zero["loss_weight"])
    (loss_sum / count.clamp(min=1)).backward()
    out["all_masked_loss"] = float(loss_sum)
    out["all_masked_count"] = int(count)
    out["all_masked_grad_max"] = max(float(p.grad.abs().max()) for p in model.parameters() if p.grad is not None)
    out["all_masked_grads_finite"] = all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
