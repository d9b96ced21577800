"""Which packed bins each rank trains on at each step: a seeded, resumable, layout-independent order.

Step s of a run consumes global samples [s * global_batch, (s + 1) * global_batch) of an endless stream
of epochs, each epoch a permutation of the bins seeded by (train.seed, epoch). The data-parallel rank d
takes a contiguous slice of the step's samples and cuts it into micro-batches. Because the loss is
normalised by the global token count, every layout (DP, PP, micro-batch size) computes the same step,
and resuming at step s needs nothing but s.
"""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch

from t3s_nemo.config import Config
from t3s_nemo.data.dataset import MaskFn, PackedBins, collate
from t3s_nemo.data.packed import PackedDataset
from t3s_nemo.errors import T3SError


class StepSampler:
    def __init__(self, num_bins: int, global_batch: int, seed: int, shuffle: bool = True):
        if num_bins == 0:
            raise T3SError("the packed dataset has no bins")
        self.num_bins = num_bins
        self.global_batch = global_batch
        self.seed = seed
        self.shuffle = shuffle
        self._epoch_cache: dict[int, np.ndarray] = {}

    def _epoch(self, e: int) -> np.ndarray:
        if e not in self._epoch_cache:
            if self.shuffle:
                order = np.random.default_rng([self.seed, e]).permutation(self.num_bins)
            else:
                order = np.arange(self.num_bins)
            self._epoch_cache = {e: order}
        return self._epoch_cache[e]

    def step_bins(self, step: int) -> np.ndarray:
        """Global bin indices of optimizer step `step` (0-based)."""
        start = step * self.global_batch
        out = np.empty(self.global_batch, dtype=np.int64)
        for k in range(self.global_batch):
            e, i = divmod(start + k, self.num_bins)
            out[k] = self._epoch(e)[i]
        return out

    def epoch_of(self, step: int) -> float:
        return step * self.global_batch / self.num_bins


def data_coverage(num_bins: int, global_batch: int, steps: int) -> tuple[str, Optional[str]]:
    """(how many passes over the data `steps` make, a warning or None) for the run's start-up line."""
    text = f"{steps * global_batch / num_bins:,.1f} epochs of {num_bins:,} bins"
    if num_bins < global_batch:
        return text, (f"the dataset has {num_bins} packed bin(s), fewer than train.global_batch_size="
                      f"{global_batch}: every step trains on some bins twice (pack more examples, or a smaller "
                      "global batch)")
    return text, None


def channel_rules(packed: PackedDataset, name: str) -> set[str]:
    """The `t3s mask` rules that made a channel: its own, or each teacher's in a `t3s data mix` output."""
    info = packed.channels.get(name, {})
    if info.get("rule"):
        return {info["rule"]}
    return {v["rule"] for v in (info.get("inputs") or {}).values() if isinstance(v, dict) and v.get("rule")}


def mask_rule_fn(cfg: Config) -> tuple[Optional[MaskFn], tuple[str, ...], tuple[str, ...]]:
    """(mask function, channels it reads, weight channels) for the run's mask.* keys."""
    weight_channels: tuple[str, ...] = ("loss_mask",)
    if cfg.mask.channel:
        return None, (), weight_channels + (cfg.mask.channel,)
    if cfg.mask.rule:
        from t3s_nemo.trajectory.masks import load_time_rule

        fn = load_time_rule(cfg.mask.rule, cfg.mask.delta_channel, cfg.mask.tau)
        return fn, (cfg.mask.delta_channel,), weight_channels
    return None, (), weight_channels


def open_training_data(cfg: Config, packed: PackedDataset) -> PackedBins:
    fn, fn_channels, weight_channels = mask_rule_fn(cfg)
    if cfg.mask.channel and "dllm" in channel_rules(packed, cfg.mask.channel):
        raise T3SError(f"config key 'mask.channel': '{cfg.mask.channel}' holds masked-diffusion targets "
                       "(`t3s mask --rule dllm`), not a loss mask; train it with model.objective=dllm, or give "
                       "an AR mask (`t3s mask --rule ar`, reverse, static-confidence, random)")
    for name in set(weight_channels[1:]) | set(fn_channels):
        if name not in packed.channels:
            have = ", ".join(packed.channels) or "none"
            raise T3SError(f"{packed.path}: no channel '{name}' (needed by mask.*; channels: {have})")
    return PackedBins(packed, weight_channels=weight_channels, mask_fn=fn, mask_fn_channels=fn_channels)


def micro_batches(bins: PackedBins, sampler: StepSampler, step: int, dp_rank: int, dp_size: int,
                  micro_batch_size: int) -> list[dict[str, torch.Tensor]]:
    """This data-parallel rank's micro-batches for one step."""
    chosen = sampler.step_bins(step)
    per_rank = len(chosen) // dp_size
    mine = chosen[dp_rank * per_rank : (dp_rank + 1) * per_rank]
    return [
        collate([bins[int(b)] for b in mine[i : i + micro_batch_size]])
        for i in range(0, len(mine), micro_batch_size)
    ]


def iterate(batches: list) -> Iterator:
    return iter(batches)


def sum_sq_lengths(batches: list[dict]) -> float:
    """Sum of squared example lengths over collated micro-batches (padding excluded): what attention
    within packed examples costs (t3s_nemo.model.qwen3.step_flops)."""
    total = 0.0
    for b in batches:
        for row in b["segment_ids"]:
            _, counts = torch.unique_consecutive(row[row >= 0], return_counts=True)
            total += float((counts.double() ** 2).sum())
    return total
