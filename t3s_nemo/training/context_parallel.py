"""Context parallelism: how a packed micro-batch is split over the CP ranks.

megatron-core's convention (the one its THD RoPE and Transformer Engine's context-parallel attention
expect): every packed example is padded to a multiple of 2 x cp tokens and cut into 2 x cp equal chunks;
CP rank r holds chunks r and 2cp-1-r of every example, so that with causal attention each rank has the
same amount of work (an early chunk with few keys and a late one with many). The model gets the rank's
tokens in the THD layout with `cu_seqlens` (real lengths) and `cu_seqlens_padded` (padded lengths), both
counted over the whole, unsplit micro-batch.

Why not a library: Megatron-LM does this in its training scripts (get_batch_on_this_cp_rank), not in
megatron-core, and its THD version calls a Transformer Engine kernel (thd_get_partitioned_indices),
which a CPU box or a GPU node without TE does not have. It is index arithmetic on the host.
"""

from __future__ import annotations

import torch

# fill values of per-token fields at the padding added to each example (default 0: no weight, token 0)
_FILL = {"segment_ids": -1, "example_ids": -1}


def split_for_context_parallel(batch: dict[str, torch.Tensor], cp: int, rank: int,
                               multiple: int = 0) -> dict[str, torch.Tensor]:
    """This CP rank's share of a collated micro-batch (t3s_nemo.data.dataset.collate).

    Per-token fields ([b, s]) become [1, t] with t = (sum of the padded example lengths) / cp; other
    fields are kept as they are. position_ids count within each padded example. multiple: what each
    example is padded to, a multiple of 2 x cp (default); with sequence parallelism 2 x cp x tp, so that
    every rank's tokens also split over the TP ranks (megatron-core pads the same way).
    """
    multiple = multiple or 2 * cp
    if multiple % (2 * cp):
        raise ValueError(f"multiple {multiple} is not a multiple of 2 x cp = {2 * cp}")
    if cp == 1:
        return batch
    b, s = batch["tokens"].shape
    cu = batch["cu_seqlens"].tolist()
    lengths = [e - a for a, e in zip(cu[:-1], cu[1:])]
    padded = [-(-n // multiple) * multiple for n in lengths]
    src, pos = [], []  # per local token: its flat index in the micro-batch (-1: padding), its position
    for start, n, p in zip(cu[:-1], lengths, padded):
        c = p // (2 * cp)
        for chunk in (rank, 2 * cp - 1 - rank):
            at = torch.arange(chunk * c, (chunk + 1) * c)
            src.append(torch.where(at < n, start + at, -1))
            pos.append(at)
    index = torch.cat(src)
    real = index >= 0
    gather = index.clamp(min=0)
    out = {}
    for k, v in batch.items():
        if v.dim() == 2 and v.shape == (b, s):
            flat = v.reshape(-1)[gather]
            out[k] = torch.where(real, flat, torch.full_like(flat, _FILL.get(k, 0))).unsqueeze(0)
        else:
            out[k] = v
    out["position_ids"] = torch.cat(pos).unsqueeze(0)
    out["cu_seqlens"] = torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0).to(torch.int32)
    out["cu_seqlens_padded"] = torch.tensor([0] + padded, dtype=torch.int32).cumsum(0).to(torch.int32)
    return out
