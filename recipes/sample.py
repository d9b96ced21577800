"""Sample answers straight from a t3s checkpoint with megatron-core's inference engine. Every rank runs it.

    torchrun --nproc-per-node N -m t3s_nemo.recipes.sample --checkpoint CKPT --prompts PROMPTS.json
        --out OUT.json --eos ID [--also-stop ID ...] [--num-samples 4 --temperature 0.6 --top-p 0.95
        --max-new-tokens 1024 --seed 0 --batch-size 64] [parallel.tp=N]

PROMPTS.json is a list of prompts, each a list of token ids. OUT.json (rank 0, written atomically) holds
{"samples": [[ids of sample 1, ...] per prompt], "seconds", "generated_tokens"}; a sample ends after its
first stop token (--eos or an --also-stop id, kept in the sample) or after max-new-tokens. This is generation.backend=megatron of `t3s bottleneck` and `t3s eval`:
no Hugging Face export, the checkpoint loads at any saved layout into tensor-parallel ranks, and
megatron-core's static inference engine keeps a KV cache. Temperature 0 is greedy decoding.

A dLLM checkpoint (marker objective=dllm) is sampled with LLaDA's block-wise low-confidence remasking
instead (t3s_nemo/dllm/sampler.py; the marker's mask_token_id; --dllm-block-length, --dllm-steps-per-block;
the answer length is max-new-tokens rounded up to a whole block; top-p is not used; it stops at --eos
only, and the caller cuts the text at the first --also-stop id).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from t3s_nemo.console import console, exit_on_user_error
from t3s_nemo.errors import T3SError


def parse_args(argv):
    p = argparse.ArgumentParser(prog="t3s_nemo.recipes.sample", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--prompts", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--eos", type=int, required=True,
                   help="the end-of-turn id: ends a sample, pads the batch; the dLLM sampler stops at it")
    p.add_argument("--also-stop", type=int, nargs="*", default=[], metavar="ID",
                   help="more ids that end a sample (a Qwen3 Base tokenizer's eos <|endoftext|>)")
    p.add_argument("--num-samples", type=int, default=4)
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64,
                   help="prompts per batch; each brings its --num-samples rows")
    p.add_argument("--dllm-block-length", type=int, default=32, help="dLLM checkpoints: tokens per block")
    p.add_argument("--dllm-steps-per-block", type=int, default=32,
                   help="dLLM checkpoints: forward passes per block (block length = one token per pass)")
    p.add_argument("overrides", nargs="*", help="parallel.tp=.. model.spec=..")
    return p.parse_args(argv)


class _TokenIds:
    """The tokenizer interface megatron-core's text generation controller calls: ids in, ids out.

    Prompts arrive as token ids and texts are decoded by the caller with the dataset's tokenizer, so only
    the end-of-sequence id (termination and padding) matters here.
    """

    def __init__(self, eos: int, vocab_size: int):
        self.eod = eos
        self.pad = eos
        self.bos = None
        self.vocab_size = vocab_size

    def tokenize(self, text):  # never called: requests carry token ids
        raise NotImplementedError("prompts are token ids")

    def detokenize(self, ids, **kwargs) -> str:
        return ""


def main(argv=None) -> None:
    from megatron.core import parallel_state as ps
    from megatron.core.inference.contexts import StaticInferenceContext
    from megatron.core.inference.engines.static_engine import StaticInferenceEngine
    from megatron.core.inference.inference_request import InferenceRequest
    from megatron.core.inference.model_inference_wrappers.gpt.gpt_inference_wrapper import GPTInferenceWrapper
    from megatron.core.inference.sampling_params import SamplingParams
    from megatron.core.inference.text_generation_controllers.text_generation_controller import (
        TextGenerationController,
    )

    from t3s_nemo.checkpoint import weights as W
    from t3s_nemo.checkpoint.consolidate import run_config
    from t3s_nemo.io import read_json
    from t3s_nemo.training.distributed import collective_device, init_distributed, init_model_parallel, shutdown
    from t3s_nemo.training.setup import build_model

    a = parse_args(sys.argv[1:] if argv is None else argv)
    if a.num_samples < 1 or a.max_new_tokens < 1 or a.batch_size < 1:
        raise T3SError(f"--num-samples, --max-new-tokens and --batch-size must be >= 1 (got {a.num_samples}, {a.max_new_tokens}, {a.batch_size})")
    prompts = read_json(Path(a.prompts), "prompts")
    if not isinstance(prompts, list) or not all(isinstance(p, list) and p for p in prompts):
        raise T3SError(f"{a.prompts}: expected a JSON list of non-empty token-id lists")
    env = init_distributed()
    marker = W.read_marker(a.checkpoint)
    cfg = run_config(marker, a.overrides)
    if cfg.parallel.pp != 1 or cfg.parallel.cp != 1:
        raise T3SError("generation.backend=megatron samples with tensor parallelism only (parallel.pp=1, cp=1)")
    if env.world_size % cfg.parallel.tp:
        raise T3SError(f"parallel.tp={cfg.parallel.tp} does not divide the world size {env.world_size}")
    init_model_parallel(cfg.parallel)
    max_len = max(len(p) for p in prompts) + a.max_new_tokens
    dllm = marker.get("objective", "ar") == "dllm"
    bundle = build_model(cfg, marker["padded_vocab_size"], max_len, bidirectional=dllm)
    W.load_weights(bundle.chunks, a.checkpoint, expect_vocab=bundle.vocab_size)
    model = bundle.chunks[0]
    model.eval()

    # data parallel over the prompts: each replica samples its share, rank 0 gathers
    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    mine = list(range(dp_rank, len(prompts), dp))
    if dllm:
        t0 = time.perf_counter()
        out = _sample_dllm(model, marker, prompts, mine, a)
        seconds = time.perf_counter() - t0
        _write(env, out, prompts, seconds, a)
        shutdown()
        return
    batch = max(1, min(a.batch_size * a.num_samples, len(mine) * a.num_samples))
    if torch.cuda.is_available():  # megatron allocates the static KV cache whole, before the first token
        row = kv_row_bytes(bundle.shape, cfg.parallel.tp, max_len, bundle.dtype)
        fit = torch.tensor([kv_cache_rows(bundle.shape, cfg.parallel.tp, max_len, bundle.dtype,
                                          torch.cuda.mem_get_info()[0])], device=collective_device())
        torch.distributed.all_reduce(fit, op=torch.distributed.ReduceOp.MIN)  # the TP ranks must agree
        fit = int(fit.item())
        if fit < 1:
            raise T3SError(f"one row of {max_len} tokens needs a {row / 2**30:,.1f} GiB KV cache per GPU, more "
                           "than is free: lower generation.max_new_tokens or raise generation.tp")
        if fit < batch:
            if env.is_main:
                console.print(f"note: {batch} rows of {max_len} tokens need a {batch * row / 2**30:,.0f} GiB KV "
                              f"cache per GPU; sampling {fit} rows at a time")
            batch = fit
    context = StaticInferenceContext(max_batch_size=batch, max_sequence_length=max_len)
    controller = _stop_at_any(TextGenerationController)(GPTInferenceWrapper(model, context),
                                                        _TokenIds(a.eos, bundle.vocab_size))
    controller.stop_ids = torch.tensor(sorted({a.eos, *a.also_stop}), device=collective_device())  # where tokens are
    # every TP rank draws the same tokens from the same seed (megatron keeps the TP ranks in step)
    engine = StaticInferenceEngine(controller, max_batch_size=batch, random_seed=a.seed + 1 + dp_rank, legacy=True)
    if a.temperature == 0:
        params = SamplingParams(temperature=1.0, top_k=1, num_tokens_to_generate=a.max_new_tokens)
    else:
        params = SamplingParams(temperature=a.temperature, top_p=a.top_p, num_tokens_to_generate=a.max_new_tokens)
    requests = [InferenceRequest(request_id=k, prompt="", prompt_tokens=list(map(int, prompts[i])),
                                 sampling_params=params) for k, i in enumerate(i for i in mine for _ in range(a.num_samples))]
    t0 = time.perf_counter()
    with torch.no_grad():
        done = engine.generate(inference_requests=requests) if requests else []
    seconds = time.perf_counter() - t0
    out: dict[int, list[list[int]]] = {i: [] for i in mine}
    for k, r in enumerate(done):
        out[mine[k // a.num_samples]].append([int(t) for t in torch.as_tensor(r.generated_tokens).tolist()])

    _write(env, out, prompts, seconds, a)
    shutdown()


def _stop_at_any(controller_cls):
    """megatron-core's static engine ends a row at one id (tokenizer.eod) and leaves that id out of the
    row's tokens. This controller ends a row at any of its `stop_ids` and keeps the stop token, as
    transformers and vLLM do, so a Base student that ends with <|endoftext|> instead of <|im_end|> stops
    there instead of computing on to max-new-tokens, and token counts agree across backends. Overriding
    update_generation_status is the engine's one place for this (megatron-core's stop_words work on
    text, through a detokenizer this sampler does not have)."""

    class StopAtAny(controller_cls):
        stop_ids: torch.Tensor

        def update_generation_status(self, updated_prompts_tokens, generation_started, current_context_end_position,
                                     is_generation_done_tensor, generated_sequence_lengths, termination_id=None):
            latest = updated_prompts_tokens[:, current_context_end_position]
            reached = torch.isin(latest, self.stop_ids.to(latest.device)) & generation_started
            if termination_id == -1:  # SamplingParams.no_early_termination
                reached = torch.zeros_like(reached)
            generated_sequence_lengths += ~is_generation_done_tensor & generation_started  # the stop counts
            return is_generation_done_tensor | reached, generated_sequence_lengths.int()

    return StopAtAny


def kv_row_bytes(shape, tp: int, max_len: int, dtype: torch.dtype) -> int:
    """Bytes of one row's KV cache on a TP rank, as megatron-core's static inference context allocates it
    (Attention._allocate_memory): K and V of [max_len, groups on this rank, head_dim] in every layer."""
    groups = max(1, shape.num_query_groups // tp)  # tp > groups: a rank keeps one replicated group
    return 2 * shape.num_layers * max_len * groups * shape.head_dim * torch.finfo(dtype).bits // 8


def kv_cache_rows(shape, tp: int, max_len: int, dtype: torch.dtype, free_bytes: int, fraction: float = 0.8) -> int:
    """How many rows' KV cache fit in `fraction` of free_bytes (the rest: activations and logits)."""
    return int(fraction * free_bytes // kv_row_bytes(shape, tp, max_len, dtype))


def _write(env, out: dict, prompts: list, seconds: float, a) -> None:
    """Rank 0 gathers every replica's samples and writes OUT.json atomically."""
    from t3s_nemo.io import atomic_write_json

    gathered = [None] * env.world_size if env.is_main else None
    torch.distributed.gather_object(out, gathered, dst=0)
    if env.is_main:
        merged = {}
        for part in gathered:
            merged.update(part)
        samples = [merged[i] for i in range(len(prompts))]
        atomic_write_json(Path(a.out), {"samples": samples, "seconds": seconds,
                                         "generated_tokens": sum(len(s) for ss in samples for s in ss)})


def _sample_dllm(model, marker: dict, prompts: list, mine: list[int], a) -> dict[int, list[list[int]]]:
    """num_samples answers per prompt of this replica from a dLLM checkpoint (ids up to and with eos)."""
    from t3s_nemo.data.tokenizer import load_tokenizer
    from t3s_nemo.dllm.sampler import sample_batch

    if marker.get("mask_token_id") is None:
        raise T3SError(f"{a.checkpoint}: a dllm checkpoint without mask_token_id in its marker (t3s.json)")
    block = min(a.dllm_block_length, a.max_new_tokens)
    gen_length = -(-a.max_new_tokens // block) * block
    vocab = len(load_tokenizer(marker.get("tokenizer", "")))
    # (prompt, sample) rows, shortest prompts first so that a batch pads little; each row has its own
    # seed, so its answer does not depend on the batch it lands in
    rows = sorted(((i, k) for i in mine for k in range(a.num_samples)), key=lambda r: (len(prompts[r[0]]), r))
    size = a.batch_size * a.num_samples
    out: dict[int, list] = {i: [None] * a.num_samples for i in mine}
    for b in range(0, len(rows), size):
        chunk = rows[b: b + size]
        samples = sample_batch(model, [[int(t) for t in prompts[i]] for i, _ in chunk],
                               seeds=[a.seed * 1_000_003 + i * 1009 + k for i, k in chunk],
                               mask_token_id=int(marker["mask_token_id"]), vocab_size=vocab, gen_length=gen_length,
                               block_length=block, steps_per_block=a.dllm_steps_per_block,
                               temperature=a.temperature, eos_id=a.eos)
        for (i, k), s in zip(chunk, samples):
            ids = s.tokens + ([a.eos] if s.num_tokens > len(s.tokens) else [])
            out[i][k] = ids[: a.max_new_tokens]  # gen_length was rounded up to whole blocks
    return out


def cli_main() -> None:
    exit_on_user_error(main)


if __name__ == "__main__":
    cli_main()
