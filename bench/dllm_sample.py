"""dLLM sampling: a batch of prompts per forward pass vs one prompt at a time.

    python bench/dllm_sample.py [--preset tiny] [--prompts 32] [--gen-length 64] [--block-length 32]
        [--steps-per-block 8] [--out bench/results/dllm_sample.json]

A bidirectional GPTModel (random init, the demo tokenizer's vocabulary plus its mask id) samples the
first --prompts prompts of the bundled demo data greedily with LLaDA's block-wise remasking
(t3s_nemo/dllm/sampler.py), no EOS so every row does the same work: once prompt by prompt (`sample`),
then all prompts in one batch left-padded under a mask, then packed as THD. Reported: generated tokens/s
of each, the batched / one-at-a-time speed ratios, and whether every answer was the same.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_data import demo_packed  # noqa: E402
from machine import machine_info  # noqa: E402

from t3s_nemo.io import atomic_write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--gen-length", type=int, default=64)
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--steps-per-block", type=int, default=8)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "dllm_sample.json"))
    a = ap.parse_args()
    if a.prompts < 1:
        ap.error("--prompts: at least 1")
    if a.block_length < 1 or a.gen_length % a.block_length:
        ap.error(f"--gen-length {a.gen_length} must be a multiple of --block-length {a.block_length}")

    from t3s_nemo.config import Config  # first: it quiets megatron-core's import-time warnings

    import torch

    from t3s_nemo.data.packed import PackedDataset
    from t3s_nemo.dllm.sampler import sample, sample_batch
    from t3s_nemo.dllm.training import choose_mask_token, model_vocab_size
    from t3s_nemo.training.distributed import init_distributed, init_model_parallel
    from t3s_nemo.training.setup import build_model, vocab_rows

    packed = PackedDataset(demo_packed(1024))
    prompts = [packed.read_example(i)[: int(packed.prompt_lengths[i])].tolist()
               for i in range(min(a.prompts, len(packed.ids)))]
    init_distributed()
    cfg = Config()
    cfg.model.preset = a.preset
    cfg.model.objective = "dllm"
    init_model_parallel(cfg.parallel)
    mask_id = choose_mask_token(packed)
    bundle = build_model(cfg, vocab_rows(model_vocab_size(packed, mask_id), cfg.parallel.tp), max(map(len, prompts)) + a.gen_length,
                         bidirectional=True)
    model = bundle.chunks[0]
    model.eval()
    kw = dict(mask_token_id=mask_id, vocab_size=packed.vocab_size, gen_length=a.gen_length,
              block_length=a.block_length, steps_per_block=a.steps_per_block)
    seeds = list(range(len(prompts)))
    cuda = torch.cuda.is_available()

    def timed(fn):
        fn()  # warm-up (and the answers)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        answers = fn()
        if cuda:
            torch.cuda.synchronize()
        return [s.tokens for s in answers], time.perf_counter() - t0

    alone, t_alone = timed(lambda: [sample(model, p, **kw, seed=s) for p, s in zip(prompts, seeds)])
    padded, t_padded = timed(lambda: sample_batch(model, prompts, seeds=seeds, **kw, thd=False))
    thd, t_thd = timed(lambda: sample_batch(model, prompts, seeds=seeds, **kw, thd=True))
    tokens = len(prompts) * a.gen_length
    result = {
        "benchmark": "dllm_sample", "preset": a.preset, "prompts": len(prompts),
        "prompt_tokens": {"min": min(map(len, prompts)), "max": max(map(len, prompts))},
        "gen_length": a.gen_length, "block_length": a.block_length, "steps_per_block": a.steps_per_block,
        "tokens_per_s": {"one_at_a_time": tokens / t_alone, "batched_padded": tokens / t_padded,
                         "batched_thd": tokens / t_thd},
        "batched_over_alone": {"padded": t_alone / t_padded, "thd": t_alone / t_thd},
        "same_answers": {"padded": padded == alone, "thd": thd == alone},
        "machine": machine_info(),
    }
    print(json.dumps({k: result[k] for k in ("tokens_per_s", "batched_over_alone", "same_answers")}))
    atomic_write_json(a.out, result)  # the result file appears whole or not at all


if __name__ == "__main__":
    main()
