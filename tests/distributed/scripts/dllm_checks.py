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
    from t3s_nemo.training.setup import build_model, vocab_rows

    packed = PackedDataset(sys.argv[1])
    init_distributed()
    cfg = Config()
    cfg.train.precision = "fp32"
    cfg.model.objective = "dllm"
    init_model_parallel(cfg.parallel)
    vocab = model_vocab_size(packed, choose_mask_token(packed))
    bundle = build_model(cfg, vocab_rows(vocab, cfg.parallel.tp), packed.seq_length, bidirectional=True)
    model = bundle.chunks[0]
    batch = collate([DllmBins(packed)[0]])
    cu = batch["cu_seqlens"].tolist()
    assert len(cu) >= 3, "bin 0 needs two examples"
    end0, end1 = cu[1], cu[2]

    def logits(tokens):
        with torch.no_grad():
            return model(**{k: v for k, v in model_inputs(batch, tokens, bundle.packed_thd).items() if k != "labels"})

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

    # the sampler (block-wise low-confidence remasking) fills every masked position with a real token
    from t3s_nemo.dllm.sampler import sample

    mask_id = choose_mask_token(packed)
    prompt = batch["tokens"][0, : int(batch["response_mask"][0].nonzero()[0])].tolist()
    kw = dict(mask_token_id=mask_id, vocab_size=packed.vocab_size, gen_length=16, block_length=8, steps_per_block=4)
    greedy = sample(model, prompt, **kw)
    again = sample(model, prompt, **kw)
    hot = sample(model, prompt, **kw, temperature=1.0, seed=1)
    eos = greedy.tokens[5]
    cut = sample(model, prompt, **kw, eos_id=eos)
    out.update({
        "sample_len": len(greedy.tokens), "sample_num_tokens": greedy.num_tokens,
        "sample_has_mask": mask_id in greedy.tokens + hot.tokens,
        "sample_max_id": max(greedy.tokens + hot.tokens), "vocab": packed.vocab_size,
        "sample_deterministic": greedy.tokens == again.tokens, "sample_hot_differs": hot.tokens != greedy.tokens,
        "eos_first_index": greedy.tokens.index(eos), "eos_num_tokens": cut.num_tokens, "eos_tokens": len(cut.tokens),
    })
    # batches: prompts of different lengths, left-padded (mask) or packed (THD); each row as alone
    from t3s_nemo.dllm.sampler import sample_batch

    prompts = [prompt, prompt[3:], prompt[:7] + prompt]
    seeds = [11, 12, 13]
    for temperature in (0.0, 1.0):
        alone = [sample(model, q, **kw, temperature=temperature, seed=s).tokens for q, s in zip(prompts, seeds)]
        for thd in (False, True):
            got = sample_batch(model, prompts, seeds=seeds, **kw, temperature=temperature, thd=thd)
            out[f"batch_equal_t{temperature:g}_thd{int(thd)}"] = [s.tokens for s in got] == alone
        out[f"batch_rows_differ_t{temperature:g}"] = len({tuple(t) for t in alone}) == len(alone)

    # the batched logits of a block against each row's own full forward pass (the old one-row sampler's):
    # a wrong block offset, slice or reshape would be wrong for one row too, so sampling alone cannot tell
    from t3s_nemo.dllm.sampler import _block_logits

    lengths = [len(q) for q in prompts]
    width = max(lengths)
    x = torch.full((len(prompts), width + 16), mask_id, dtype=torch.long)
    for r, q in enumerate(prompts):
        x[r, width - len(q): width] = torch.as_tensor(q)
    for thd in (False, True):
        with torch.no_grad():
            got = _block_logits(model, x, lengths, width, width + 8, 8, thd)
        worst = 0.0
        for r, n in enumerate(lengths):
            ids = x[r:r + 1, width - n:]
            s = ids.shape[1]
            with torch.no_grad():
                full = model(ids, torch.arange(s).unsqueeze(0), torch.zeros(1, 1, s, s, dtype=torch.bool))
            worst = max(worst, float((got[r] - full[0, n + 8: n + 16]).abs().max()))
        out[f"block_logits_max_diff_thd{int(thd)}"] = worst

    # a row whose EOS lands in a finished block leaves the batch: forward passes are counted
    calls = []
    hook = model.register_forward_hook(lambda m, a, o: calls.append(1))
    both = sample_batch(model, [prompt, prompt], seeds=[0, 0], **kw, eos_id=eos)  # EOS in block 1 of 2
    eos_calls = len(calls)
    sample_batch(model, [prompt, prompt], seeds=[0, 0], **kw)
    hook.remove()
    out.update({"eos_prefix_equal": cut.tokens == greedy.tokens[: len(cut.tokens)],
                "eos_batch_rows": [s.tokens for s in both] == [cut.tokens, cut.tokens],
                "eos_calls": eos_calls, "full_calls": len(calls) - eos_calls})
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
