"""LLaDA-style masked-diffusion objective (issue 7, dLLM half): noising, 1/t weights, T3S union mask.

Per sequence (a packed segment), a noise level t ~ U(eps, 1) is drawn; each response token is replaced
by the mask token with probability t; the prompt is never noised. The loss is cross-entropy on the
noised positions weighted 1/t and normalised by the number of response tokens (LLaDA eq. 3, with
L = response length). For T3S, the noise mask is `random_mask OR targets`, targets = delta < -tau
from `t3s mask --rule dllm`; the realised masked fraction is reported because the union is no longer
t in expectation.

Only the pure-torch parts live here; t3s_nemo/dllm/training.py wires them into the training recipe
(model.objective=dllm); t3s_nemo/dllm/sampler.py samples a dLLM (docs/dllm.md).
"""

from __future__ import annotations

from typing import Optional

import torch


def sample_noise(
    response_mask: torch.Tensor,
    segment_ids: torch.Tensor,
    generator: torch.Generator,
    eps: float = 1e-3,
    targets: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise_mask [b, s] bool, t [b, s] float: the noise level of each token's segment).

    response_mask: [b, s] 1 on response tokens (the loss mask); prompt tokens are never noised.
    segment_ids: [b, s] packed-sequence ids; each (row, segment) draws its own t ~ U(eps, 1).
    targets: optional [b, s] T3S targets; they are always noised (union with the random mask).
    """
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    resp = response_mask.bool()
    b, s = resp.shape
    seg = segment_ids.long()
    n_seg = int(seg.max()) + 1 if seg.numel() else 1
    t_seg = eps + (1.0 - eps) * torch.rand((b, n_seg), generator=generator)
    t = torch.gather(t_seg, 1, seg)
    u = torch.rand((b, s), generator=generator)
    noise = (u < t) & resp
    if targets is not None:
        noise = noise | (targets.bool() & resp)
    return noise, t


def apply_noise(tokens: torch.Tensor, noise_mask: torch.Tensor, mask_token_id: int) -> torch.Tensor:
    """Input ids with the noised positions replaced by the mask token (labels stay the clean tokens)."""
    return torch.where(noise_mask, torch.full_like(tokens, mask_token_id), tokens)


def loss_weight(noise_mask: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per-token weights 1/t on noised positions, 0 elsewhere (to multiply the per-token cross-entropy)."""
    return torch.where(noise_mask, 1.0 / t, torch.zeros_like(t))


def masked_fraction(noise_mask: torch.Tensor, response_mask: torch.Tensor) -> float:
    """Realised fraction of response tokens that were noised (reported to trajectory.jsonl)."""
    n = float(response_mask.bool().sum())
    return float((noise_mask & response_mask.bool()).sum()) / n if n else 0.0


def dllm_loss(per_token_ce: torch.Tensor, weight: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """sum(ce * w) / (number of response tokens): LLaDA's estimator of the negative log-likelihood bound."""
    n = response_mask.bool().sum().clamp(min=1)
    return torch.where(weight != 0, per_token_ce.float() * weight, torch.zeros_like(weight)).sum() / n
