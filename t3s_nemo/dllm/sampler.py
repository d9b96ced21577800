"""LLaDA-style sampling from a masked-diffusion student: block-wise iterative low-confidence remasking.

The answer starts as `gen_length` mask tokens after the prompt and is filled left to right in blocks of
`block_length`. Within a block, each of `steps_per_block` forward passes predicts every masked position
(argmax, or Gumbel-max at temperature > 0) and keeps the most confident predictions -- an even share of
the block per step -- leaving the others masked for the next pass (LLaDA, "low-confidence remasking").

`sample_batch` fills many answers per forward pass, and each answer is the one `sample` gives alone:
- prompts of different lengths are left-padded, and padding is masked out of attention. RoPE depends only
  on the distance between positions, so the shift changes nothing. Models that take packed THD input
  (Transformer Engine) get the rows packed with cu_seqlens instead, with no padding at all;
- each row draws its Gumbel noise from its own seed, in the same order as alone;
- only the block's positions go through the output layer (a [rows, block, vocab] logits tensor, not
  [rows, prompt + answer, vocab]), as megatron's inference keeps only the last token's logits;
- a row leaves the batch once a finished block holds its EOS: the answer ends there, and the blocks after
  it cannot change the blocks before (they are final once filled).

Functions on an in-memory megatron GPTModel (forward only; logits gathered over TP ranks, so every rank of
a TP group returns the same tokens). recipes/sample.py (generation.backend=megatron) calls them for
checkpoints whose marker says objective=dllm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch


@dataclass
class DllmSample:
    tokens: list[int]  # the answer up to and excluding the first EOS (all gen_length tokens if none)
    num_tokens: int  # generated tokens counted as for AR samples: up to and including EOS


@torch.no_grad()
def sample(model, prompt: list[int], *, mask_token_id: int, vocab_size: int, gen_length: int = 64,
           block_length: int = 32, steps_per_block: int = 8, temperature: float = 0.0,
           eos_id: Optional[int] = None, seed: int = 0) -> DllmSample:
    """One answer for `prompt` (token ids). vocab_size: the tokenizer's, so padding rows and the mask
    id itself are never produced."""
    return sample_batch(model, [prompt], seeds=[seed], mask_token_id=mask_token_id, vocab_size=vocab_size,
                        gen_length=gen_length, block_length=block_length, steps_per_block=steps_per_block,
                        temperature=temperature, eos_id=eos_id)[0]


@torch.no_grad()
def sample_batch(model, prompts: Sequence[Sequence[int]], *, seeds: Sequence[int], mask_token_id: int,
                 vocab_size: int, gen_length: int = 64, block_length: int = 32, steps_per_block: int = 8,
                 temperature: float = 0.0, eos_id: Optional[int] = None,
                 thd: Optional[bool] = None) -> list[DllmSample]:
    """One answer per prompt, all rows in each forward pass; row r draws its noise from seeds[r].

    thd: pack the rows with cu_seqlens (no padding) instead of left-padding them under a mask; None
    chooses THD for Transformer Engine models, which take no arbitrary mask, and padding otherwise (one
    batched attention call per layer).
    """
    if gen_length % block_length:
        raise ValueError(f"gen_length {gen_length} is not a multiple of block_length {block_length}")
    if len(seeds) != len(prompts) or not prompts or not all(len(p) for p in prompts):
        raise ValueError("sample_batch needs one seed per prompt and non-empty prompts")
    from t3s_nemo.training.loss import has_te_layers

    if thd is None:
        thd = has_te_layers(model)
    device = next(model.parameters()).device
    lengths = [len(p) for p in prompts]
    width = max(lengths)  # the answers start at column `width` of the left-padded rows
    if not thd:  # sequence parallelism splits the rows' length over the TP ranks: pad it to a multiple
        width += -(width + gen_length) % _sp_multiple(model)
    x = torch.full((len(prompts), width + gen_length), mask_token_id, dtype=torch.long, device=device)
    for r, p in enumerate(prompts):
        x[r, width - len(p): width] = torch.as_tensor(list(p), dtype=torch.long, device=device)
    gens = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
    steps = max(1, min(steps_per_block, block_length))
    # an even share of the block per step (the first steps take the remainder), as LLaDA's schedule
    share = [block_length // steps + (1 if i < block_length % steps else 0) for i in range(steps)]
    active = list(range(len(prompts)))
    for b0 in range(width, width + gen_length, block_length):
        for k in share:  # every row of the block has the same number of masked positions at each step
            rows = torch.as_tensor(active, device=device)
            logits = _block_logits(model, x[rows], [lengths[r] for r in active], width, b0, block_length, thd)
            logits = logits[..., :vocab_size].float()
            if mask_token_id < vocab_size:
                logits[..., mask_token_id] = float("-inf")
            if temperature > 0:  # Gumbel-max; each row's noise from its own generator, added row by row
                scores = logits / temperature
                for j, r in enumerate(active):
                    u = torch.rand(scores.shape[1:], generator=gens[r], device=device)
                    scores[j] -= torch.log(-torch.log(u.clamp(1e-10, 1.0)))
                pred = scores.argmax(-1)
                del scores
            else:
                pred = logits.argmax(-1)
            conf = torch.softmax(logits, -1).gather(-1, pred.unsqueeze(-1)).squeeze(-1)
            block = x[rows, b0: b0 + block_length]
            masked = block == mask_token_id
            conf = torch.where(masked, conf, torch.full_like(conf, -1.0))
            keep = conf.topk(min(k, int(masked[0].sum())), dim=-1).indices
            block.scatter_(1, keep, pred.gather(1, keep))
            x[rows, b0: b0 + block_length] = block
        if eos_id is not None:  # an answer whose EOS is in a finished block is final
            done = (x[active, b0: b0 + block_length] == eos_id).any(-1).tolist()
            active = [r for r, d in zip(active, done) if not d]
        if not active:
            break
    out = []
    for r in range(len(prompts)):
        answer = x[r, width:].tolist()
        if eos_id is not None and eos_id in answer:
            cut = answer.index(eos_id)
            out.append(DllmSample(tokens=answer[:cut], num_tokens=cut + 1))
        else:
            out.append(DllmSample(tokens=answer, num_tokens=len(answer)))
    return out


def _block_logits(model, x: torch.Tensor, lengths: list[int], width: int, b0: int, block_length: int,
                  thd: bool) -> torch.Tensor:
    """Logits [rows, block_length, V] (gathered over TP ranks) at columns b0.. of the left-padded rows x
    of a bidirectional GPTModel; row r's prompt is its last lengths[r] columns before `width`.

    The rows go in as a packed micro-batch does in dLLM training (`training.model_inputs`): left-padded
    under a mask that keeps the padding out of the rows' attention, or (THD) without their padding,
    one sequence per row in cu_seqlens.
    """
    from megatron.core.tensor_parallel.mappings import gather_from_tensor_model_parallel_region

    from t3s_nemo.dllm.training import model_inputs

    rows, s = x.shape
    device = x.device
    starts = [width - n for n in lengths]
    if thd:
        seqs = [x[r, a:] for r, a in enumerate(starts)]
        extra = -sum(len(q) for q in seqs) % _sp_multiple(model)
        if extra:  # sequence parallelism: one more (ignored) sequence makes the total split over TP ranks
            seqs.append(x.new_zeros(extra))
        cu = torch.tensor([0] + [len(q) for q in seqs], device=device).cumsum(0)
        ids = torch.cat(seqs).unsqueeze(0)
        batch = {"tokens": ids, "labels": ids, "cu_seqlens": cu,
                 "position_ids": torch.cat([torch.arange(len(q), device=device) for q in seqs]).unsqueeze(0)}
        # the block's positions in the decoder's output [total, 1, h]: b0 - starts[r] into row r's sequence
        at = torch.cat([cu[r] + b0 - a + torch.arange(block_length, device=device) for r, a in enumerate(starts)])
    else:
        ids = x
        cols = torch.arange(s, device=device)
        first = torch.as_tensor(starts, device=device).unsqueeze(1)
        batch = {"tokens": x, "labels": x, "position_ids": (cols - first).clamp(min=0),
                 "segment_ids": torch.where(cols >= first, 0, -1)}  # -1: the padding attends only to itself
        at = b0 + torch.arange(block_length, device=device)  # in the decoder's output [s, rows, h]
    kw = model_inputs(batch, ids, thd)
    del kw["labels"]  # logits, not a loss
    # only the block's hidden states reach the output layer; with sequence parallelism the decoder's
    # output is split over the sequence, so the logits are taken in full and sliced after
    sliced = not model.config.sequence_parallel
    hook = model.decoder.register_forward_hook(lambda m, a, out: out.index_select(0, at)) if sliced else None
    try:
        out = model(**kw)
    finally:
        if hook is not None:
            hook.remove()
    out = gather_from_tensor_model_parallel_region(out) if model.parallel_output else out
    if not sliced:
        out = out.index_select(1, at)
    return out.reshape(rows, block_length, -1)


def _sp_multiple(model) -> int:
    """The TP size when the model runs with sequence parallelism (its sequence splits over TP ranks), else 1."""
    return model.config.tensor_model_parallel_size if model.config.sequence_parallel else 1
