"""LLaDA-style sampling from a masked-diffusion student: block-wise iterative low-confidence remasking.

The answer starts as `gen_length` mask tokens after the prompt and is filled left to right in blocks of
`block_length`. Within a block, each of `steps_per_block` forward passes predicts every masked position
(argmax, or Gumbel-max at temperature > 0) and keeps the most confident predictions -- an even share of
the block per step -- leaving the others masked for the next pass (LLaDA, "low-confidence remasking").

A function on an in-memory megatron GPTModel (forward only; logits gathered over TP ranks, so every rank
of a TP group returns the same tokens). recipes/sample.py (generation.backend=megatron) calls it for
checkpoints whose marker says objective=dllm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class DllmSample:
    tokens: list[int]  # the answer up to and excluding the first EOS (all gen_length tokens if none)
    num_tokens: int  # generated tokens counted as for AR samples: up to and including EOS


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary logits [1, s, V] of a bidirectional GPTModel (gathered over TP ranks)."""
    from megatron.core.tensor_parallel.mappings import gather_from_tensor_model_parallel_region

    s = ids.shape[1]
    pos = torch.arange(s, device=ids.device).unsqueeze(0)
    mask = torch.zeros(1, 1, s, s, dtype=torch.bool, device=ids.device)  # one sequence: attend everywhere
    out = model(ids, pos, mask)
    return gather_from_tensor_model_parallel_region(out) if model.parallel_output else out


@torch.no_grad()
def sample(model, prompt: list[int], *, mask_token_id: int, vocab_size: int, gen_length: int = 64,
           block_length: int = 32, steps_per_block: int = 8, temperature: float = 0.0,
           eos_id: Optional[int] = None, seed: int = 0) -> DllmSample:
    """One answer for `prompt` (token ids). vocab_size: the tokenizer's, so padding rows and the mask
    id itself are never produced."""
    if gen_length % block_length:
        raise ValueError(f"gen_length {gen_length} is not a multiple of block_length {block_length}")
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    p = len(prompt)
    x = torch.full((1, p + gen_length), mask_token_id, dtype=torch.long)
    x[0, :p] = torch.as_tensor(prompt, dtype=torch.long)
    for b0 in range(p, p + gen_length, block_length):
        block = slice(b0, b0 + block_length)
        steps = max(1, min(steps_per_block, block_length))
        # an even share of the block per step (the first steps take the remainder), as LLaDA's schedule
        share = [block_length // steps + (1 if i < block_length % steps else 0) for i in range(steps)]
        for k in share:
            masked = x[0, block] == mask_token_id
            if not masked.any():
                break
            logits = _logits(model, x.to(device))[0, block, :vocab_size].float().cpu()
            if mask_token_id < vocab_size:
                logits[:, mask_token_id] = float("-inf")
            if temperature > 0:
                gumbel = -torch.log(-torch.log(torch.rand(logits.shape, generator=g).clamp(1e-10, 1.0)))
                pred = (logits / temperature + gumbel).argmax(-1)
            else:
                pred = logits.argmax(-1)
            conf = torch.softmax(logits, -1).gather(-1, pred.unsqueeze(-1)).squeeze(-1)
            conf = torch.where(masked, conf, torch.full_like(conf, -1.0))
            keep = conf.topk(min(k, int(masked.sum()))).indices
            x[0, b0 + keep] = pred[keep]
    answer = x[0, p:].tolist()
    if eos_id is not None and eos_id in answer:
        cut = answer.index(eos_id)
        return DllmSample(tokens=answer[:cut], num_tokens=cut + 1)
    return DllmSample(tokens=answer, num_tokens=len(answer))
