"""Single-process checks that the dLLM student's attention is bidirectional within a packed example and
block-diagonal across examples (real megatron GPTModel, CPU mode); prints one JSON object.

Run by tests/distributed/test_dllm.py in a subprocess so megatron's parallel state stays out of pytest.
"""

import json
import sys

import torch


def main() -> None:
    from t3s_nemo.config import Config
    from t3s_nemo.data.dataset import collate
    from t3s_nemo.data.packed import PackedDataset
    from t3s_nemo.dllm.training import DllmBins, choose_mask_token, model_inputs, model_vocab_size
    from t3s_nemo.training.distributed import init_distributed, init_model_parallel
    from t3s_nemo.training.setup import build_model

    packed = PackedDataset(sys.argv[1])
    init_distributed()
    cfg = Config()
    cfg.train.precision = "fp32"
    cfg.model.objective = "dllm"
    init_model_parallel(cfg.parallel)
    vocab = model_vocab_size(packed, choose_mask_token(packed))
    model = build_model(cfg, vocab, packed.seq_length, bidirectional=True).chunks[0]
    batch = collate([DllmBins(packed)[0]])
    cu = batch["cu_seqlens"].tolist()
    assert len(cu) >= 3, "bin 0 needs two examples"
    end0, end1 = cu[1], cu[2]

    def logits(tokens):
        with torch.no_grad():
            return model(**{k: v for k, v in model_inputs(batch, tokens, use_te=False).items() if k != "labels"})

    ref = logits(batch["tokens"])
    changed = batch["tokens"].clone()
    changed[0, end0 - 1] = (changed[0, end0 - 1] + 5) % packed.vocab_size  # the last token of example 0
    new = logits(changed)
    out = {
        # an earlier position of the same example sees the later token: bidirectional
        "example0_first_position_change": float((new[0, 0] - ref[0, 0]).abs().max()),
        "example0_earlier_positions_changed": int(((new[0, : end0 - 1] - ref[0, : end0 - 1]).abs().amax(-1) > 1e-6).sum()),
        "example0_earlier_positions": end0 - 1,
        # the next packed example does not see it: block-diagonal
        "example1_max_change": float((new[0, end0:end1] - ref[0, end0:end1]).abs().max()),
    }
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
