"""Training samples from a packed dataset: one packed bin per sample, padded to seq_length.

Within each example, labels are the next token and the loss weight of position i is the product of the
weight channels at token i+1 (a channel value belongs to the token it describes, which is predicted
one position earlier). The last position of every example predicts nothing and has weight 0, so
examples in a bin never leak into each other's loss; attention is kept inside examples by cu_seqlens
(THD: Transformer Engine, and the sdpa spec on long bins) or by the equivalent block-diagonal mask.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch

from t3s_nemo.data.packed import PackedDataset

# Builds an extra per-token 0/1 mask for one example from its channels (e.g. a T3S rule on delta).
MaskFn = Callable[[dict[str, np.ndarray]], np.ndarray]


class PackedBins(torch.utils.data.Dataset):
    """A torch Dataset over the bins of a packed dataset."""

    def __init__(
        self,
        packed: PackedDataset,
        weight_channels: Sequence[str] = ("loss_mask",),
        mask_fn: Optional[MaskFn] = None,
        mask_fn_channels: Sequence[str] = (),
        value_channels: Sequence[str] = (),
    ):
        self.packed = packed
        self.weight_channels = tuple(weight_channels)
        self.mask_fn = mask_fn
        self.value_channels = tuple(value_channels)
        self._read = tuple(dict.fromkeys(("tokens",) + self.weight_channels + tuple(mask_fn_channels) + self.value_channels))
        self.seq_length = packed.seq_length
        self.pad_id = packed.pad_id

    def __len__(self) -> int:
        return self.packed.num_bins

    def __getitem__(self, b: int) -> dict[str, torch.Tensor]:
        S = self.seq_length
        data = self.packed.read_bin(b, self._read)
        tokens = np.full(S, self.pad_id, dtype=np.int64)
        labels = np.full(S, self.pad_id, dtype=np.int64)
        weight = np.zeros(S, dtype=np.float32)
        response = np.zeros(S, dtype=np.float32)  # loss_mask alone: what the T3S mask is a fraction of
        position_ids = np.zeros(S, dtype=np.int64)
        segment_ids = np.full(S, -1, dtype=np.int64)
        values = {name: np.zeros(S, dtype=np.float32) for name in self.value_channels}
        example_ids = np.full(S, -1, dtype=np.int64)
        first = self.packed.bin_range(b).start
        cu = [0]
        off = 0
        for k, seq in enumerate(data["tokens"]):
            n = len(seq)
            tokens[off : off + n] = seq
            labels[off : off + n - 1] = seq[1:]
            w = np.ones(n, dtype=np.float32)
            for name in self.weight_channels:
                w *= data[name][k]
            if self.mask_fn is not None:
                w *= self.mask_fn({name: data[name][k] for name in data}).astype(np.float32)
            weight[off : off + n - 1] = w[1:]
            if "loss_mask" in data:
                response[off : off + n - 1] = data["loss_mask"][k][1:]
            for name in self.value_channels:
                values[name][off : off + n - 1] = data[name][k][1:]
            position_ids[off : off + n] = np.arange(n)
            segment_ids[off : off + n] = k
            example_ids[off : off + n] = first + k
            off += n
            cu.append(off)
        if off < S:  # padding forms its own segment so no real token attends to it
            position_ids[off:] = np.arange(S - off)
            cu.append(S)
        out = {
            "tokens": torch.from_numpy(tokens),
            "labels": torch.from_numpy(labels),
            "loss_weight": torch.from_numpy(weight),
            "response_mask": torch.from_numpy(response),
            "position_ids": torch.from_numpy(position_ids),
            "segment_ids": torch.from_numpy(segment_ids),
            "example_ids": torch.from_numpy(example_ids),
            "cu_seqlens": torch.tensor(cu, dtype=torch.int32),
            "bin_index": torch.tensor(b, dtype=torch.int64),
        }
        for name, v in values.items():
            out[f"value_{name}"] = torch.from_numpy(v)
        return out


def collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack fixed-size fields; cu_seqlens of all samples are offset into one flat (THD) sequence."""
    out = {k: torch.stack([s[k] for s in samples]) for k in samples[0] if k != "cu_seqlens"}
    S = samples[0]["tokens"].numel()
    cu = [samples[0]["cu_seqlens"]]
    for i, s in enumerate(samples[1:], start=1):
        cu.append(s["cu_seqlens"][1:] + i * S)
    out["cu_seqlens"] = torch.cat(cu).to(torch.int32)
    return out


def block_causal_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """[b, 1, s, s] bool mask, True where attention is *not* allowed (megatron-core's convention).

    A position attends to earlier-or-equal positions of its own example; padding (segment -1) attends
    within the padding so no softmax row is empty.
    """
    same = segment_ids.unsqueeze(-1) == segment_ids.unsqueeze(-2)
    s = segment_ids.shape[-1]
    causal = torch.ones(s, s, dtype=torch.bool, device=segment_ids.device).tril()
    return (~(same & causal)).unsqueeze(1)
