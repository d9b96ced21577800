"""The context-parallel split of a packed micro-batch: every example padded to a multiple of 2 x cp and
cut into 2 x cp chunks, rank r holding chunks r and 2cp-1-r (megatron-core's THD convention)."""

import torch

from t3s_nemo.data.dataset import collate
from t3s_nemo.training.context_parallel import split_for_context_parallel


def sample(lengths, S, base):
    """A PackedBins-like sample: examples of these lengths, then padding as its own segment."""
    tokens = torch.zeros(S, dtype=torch.long)
    segment = torch.full((S,), -1, dtype=torch.long)
    position = torch.zeros(S, dtype=torch.long)
    cu, off = [0], 0
    for k, n in enumerate(lengths):
        tokens[off: off + n] = base + 100 * k + torch.arange(1, n + 1)
        segment[off: off + n] = k
        position[off: off + n] = torch.arange(n)
        off += n
        cu.append(off)
    if off < S:
        position[off:] = torch.arange(S - off)
        cu.append(S)
    return {"tokens": tokens, "labels": tokens + 1, "loss_weight": (segment >= 0).float(),
            "segment_ids": segment, "position_ids": position, "cu_seqlens": torch.tensor(cu, dtype=torch.int32),
            "bin_index": torch.tensor(base)}


def test_ranks_hold_balanced_chunks_that_rebuild_every_example():
    batch = collate([sample([3, 5], 10, 1000), sample([10], 10, 2000)])  # sequences 3, 5, 2 (padding), 10
    cp = 2
    parts = [split_for_context_parallel(batch, cp, r) for r in range(cp)]
    padded = [4, 8, 4, 12]
    real = [3, 5, 2, 10]
    for p in parts:
        assert p["cu_seqlens"].tolist() == [0, 3, 8, 10, 20]
        assert p["cu_seqlens_padded"].tolist() == [0, 4, 12, 16, 28]
        assert p["tokens"].shape == (1, sum(padded) // cp)  # the same number of tokens on every rank
        assert torch.equal(p["bin_index"], batch["bin_index"])  # non-token fields unchanged
    flat = {k: batch[k].reshape(-1) for k in ("tokens", "labels", "loss_weight", "segment_ids")}
    lo, start = 0, 0
    for n, L in zip(real, padded):
        c = L // (2 * cp)
        chunks = {}  # chunk j of the example -> (rank, where in that rank's tokens)
        for r in range(cp):  # rank r's share of this example: chunk r, then chunk 2cp-1-r
            chunks[r] = (r, slice(lo, lo + c))
            chunks[2 * cp - 1 - r] = (r, slice(lo + c, lo + 2 * c))
        for k, want in flat.items():
            got = torch.cat([parts[r][k][0, at] for r, at in (chunks[j] for j in range(2 * cp))])
            assert torch.equal(got[:n], want[start: start + n]), k
            fill = -1 if k == "segment_ids" else 0  # the added padding: no weight, its own segment
            assert (got[n:] == fill).all(), k
        pos = torch.cat([parts[r]["position_ids"][0, at] for r, at in (chunks[j] for j in range(2 * cp))])
        assert pos.tolist() == list(range(L))
        lo, start = lo + 2 * c, start + n


def test_one_rank_is_the_batch_itself():
    batch = collate([sample([3, 5], 10, 1000)])
    assert split_for_context_parallel(batch, 1, 0) is batch
