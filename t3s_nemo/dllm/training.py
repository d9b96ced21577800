"""Training a masked-diffusion LM (LLaDA-style) on the same megatron-core engine as the AR student.

What differs from next-token training (recipes/train.py picks these when model.objective=dllm):
- data: `DllmBins` keeps tokens, response mask and T3S targets *unshifted* (the loss at position i is
  on token i itself, not on token i+1);
- attention: bidirectional within each packed example, block-diagonal across examples (`layer_spec`
  with bidirectional=True plus `bidirectional_mask` where the bins take a mask; cu_seqlens/THD where
  they go in packed, `ModelBundle.packed_thd`);
- `dllm_forward_step`: noises each micro-batch (seeded by train.seed, step and the global micro-batch
  index, so a resumed run draws the same noise, all TP/PP ranks of a replica agree and the DP size does
  not change it),
  feeds the noised tokens and returns the 1/t-weighted cross-entropy on noised positions against the
  clean tokens, normalised (globally, by megatron's per-token loss mode) by the response-token count.

The mask token: the tokenizer's own mask token when it has one, else one extra id right past the
tokenizer's vocabulary (`len(tokenizer)`); the embedding is sized for it (padded for TP as usual). The
chosen id is written to config.yaml (model.mask_token_id) and the checkpoint marker.
"""

from __future__ import annotations

from functools import partial
from typing import Iterator, Optional

import numpy as np
import torch

from t3s_nemo.data.dataset import PackedBins
from t3s_nemo.data.packed import PackedDataset
from t3s_nemo.dllm.objective import apply_noise, loss_weight, sample_noise
from t3s_nemo.errors import T3SError


def choose_mask_token(packed: PackedDataset, configured: Optional[int] = None) -> int:
    """model.mask_token_id if set, else the tokenizer's mask token, else len(tokenizer) (an extra id)."""
    if configured is not None:
        if configured < 0:
            raise T3SError(f"config key 'model.mask_token_id': expected a non-negative token id, got {configured}")
        return int(configured)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(packed.tokenizer_dir))
    mid = getattr(tok, "mask_token_id", None)
    if mid is not None and 0 <= mid < packed.vocab_size:
        return int(mid)
    return packed.vocab_size


def model_vocab_size(packed: PackedDataset, mask_token_id: int) -> int:
    """Unpadded vocabulary the model needs: the tokenizer's, plus the extra mask id if it lies past it."""
    return max(packed.vocab_size, mask_token_id + 1)


class DllmBins(torch.utils.data.Dataset):
    """Packed bins for the diffusion objective: labels = the tokens themselves, masks unshifted.

    Fields: tokens, labels (= tokens), response_mask (loss_mask of each token), targets (the T3S
    dLLM targets of each token, 0 without mask.*), position_ids, segment_ids, cu_seqlens, ...
    """

    def __init__(self, packed: PackedDataset, target_channel: str = "", delta_channel: str = "",
                 tau: float = 0.2):
        self.base = PackedBins(packed, weight_channels=("loss_mask",))
        self.packed = packed
        self.target_channel = target_channel
        self.delta_channel = delta_channel
        self.tau = tau
        for name in ("loss_mask", target_channel, delta_channel):
            if name and name not in packed.channels:
                have = ", ".join(packed.channels) or "none"
                raise T3SError(f"{packed.path}: no channel '{name}' (needed by the dllm objective; channels: {have})")

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, b: int) -> dict[str, torch.Tensor]:
        from t3s_nemo.trajectory.masks import dllm_targets

        out = self.base[b]
        S = self.base.seq_length
        names = [n for n in ("loss_mask", self.target_channel, self.delta_channel) if n]
        data = self.packed.read_bin(b, tuple(dict.fromkeys(names)))
        response = np.zeros(S, dtype=np.float32)
        targets = np.zeros(S, dtype=np.float32)
        off = 0
        for k, lm in enumerate(data["loss_mask"]):
            n = len(lm)
            response[off : off + n] = lm
            if self.target_channel:
                targets[off : off + n] = data[self.target_channel][k]
            elif self.delta_channel:
                targets[off : off + n] = dllm_targets(np.asarray(data[self.delta_channel][k]), self.tau)
            off += n
        out["labels"] = out["tokens"].clone()
        out["response_mask"] = torch.from_numpy(response)
        out["loss_weight"] = out["response_mask"].clone()
        out["targets"] = torch.from_numpy(targets) * out["response_mask"]
        return out


def open_dllm_data(cfg, packed: PackedDataset) -> DllmBins:
    """DllmBins for the run's mask.* keys: mask.channel = a targets channel (`t3s mask --rule dllm`),
    mask.rule=dllm = targets built at load time from the delta channel; other rules make no sense here."""
    if cfg.mask.rule and cfg.mask.rule != "dllm":
        raise T3SError(f"config key 'mask.rule': '{cfg.mask.rule}' is an AR loss mask; with model.objective=dllm "
                       "use mask.rule=dllm or mask.channel=<a channel from `t3s mask --rule dllm`>")
    if cfg.mask.channel:
        from t3s_nemo.training.data import channel_rules

        rules = channel_rules(packed, cfg.mask.channel) - {"dllm"}
        if rules:  # 1 on the tokens to train, not on the targets to noise: a different meaning entirely
            raise T3SError(f"config key 'mask.channel': '{cfg.mask.channel}' is an AR loss mask (rule "
                           f"{', '.join(sorted(rules))}); with model.objective=dllm give targets from "
                           "`t3s mask --rule dllm`, or mask.rule=dllm")
        return DllmBins(packed, target_channel=cfg.mask.channel)
    if cfg.mask.rule == "dllm":
        return DllmBins(packed, delta_channel=cfg.mask.delta_channel, tau=cfg.mask.tau)
    return DllmBins(packed)


def noise_seed(seed: int, step: int, micro_batch: int) -> int:
    """A 63-bit seed for one micro-batch's noise; independent streams via numpy's SeedSequence.

    micro_batch is the step's *global* micro-batch index (data-parallel rank x micro-batches per rank +
    local index: ranks take contiguous slices of the step's bins), so the noise does not depend on the
    data-parallel size; the 0 keeps the seeds single-replica runs drew before this was global.
    """
    a, b = np.random.SeedSequence([seed, step, 0, micro_batch]).generate_state(2, np.uint32)
    return (int(a) << 31) ^ int(b)


def add_noise_seeds(batches: list[dict], seed: int, step: int, dp_rank: int) -> list[dict]:
    for i, batch in enumerate(batches):
        batch["noise_seed"] = torch.tensor(noise_seed(seed, step, dp_rank * len(batches) + i), dtype=torch.int64)
    return batches


def add_noise(batches: list[dict], mask_token_id: int, eps: float) -> list[dict]:
    """Draw every micro-batch's noise now, into per-token fields `noised_ids` and `noise_weight`: with
    context parallelism a rank holds only a share of each example, but t is drawn per example."""
    for batch in batches:
        noised = noise_batch(batch, mask_token_id, eps)
        batch["noised_ids"], batch["noise_weight"] = noised["input_ids"], noised["loss_weight"]
    return batches


def noise_batch(batch: dict[str, torch.Tensor], mask_token_id: int, eps: float) -> dict[str, torch.Tensor]:
    """input_ids (noised), loss_weight (1/t on noised positions), noised_tokens, for a CPU batch."""
    g = torch.Generator().manual_seed(int(batch["noise_seed"]))
    noise, t = sample_noise(batch["response_mask"], batch["segment_ids"].clamp(min=0), g, eps=eps,
                            targets=batch["targets"])
    return {
        "input_ids": apply_noise(batch["tokens"], noise, mask_token_id),
        "loss_weight": loss_weight(noise, t),
        "noised_tokens": noise.sum(),
    }


def bidirectional_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """[b, 1, s, s] bool, True where attention is *not* allowed: each position sees its whole example
    (before and after it) and nothing of other packed examples; padding attends within the padding."""
    return (segment_ids.unsqueeze(-1) != segment_ids.unsqueeze(-2)).unsqueeze(1)


def model_inputs(batch: dict[str, torch.Tensor], input_ids: torch.Tensor, thd: bool) -> dict:
    from t3s_nemo.training.loss import batch_to_model_inputs

    kw = batch_to_model_inputs(batch, thd)
    if thd:  # THD: cu_seqlens separate the examples; the spec's padding mask type makes it non-causal
        kw["input_ids"] = input_ids.reshape(1, -1)
    else:
        kw["input_ids"] = input_ids
        kw["attention_mask"] = bidirectional_mask(batch["segment_ids"])
    return kw


def dllm_forward_step(data_iterator: Iterator[dict], model, thd: Optional[bool] = None, *,
                      mask_token_id: int, eps: float = 1e-3):
    """forward_step_func for megatron-core's get_forward_backward_func (bind the keywords with partial).

    Items of data_iterator are DllmBins micro-batches carrying a `noise_seed` (add_noise_seeds), or
    their noise already drawn (add_noise: context parallelism).
    """
    from t3s_nemo.training.loss import model_takes_thd

    batch = next(data_iterator)
    if "noised_ids" in batch:
        noised = {"input_ids": batch["noised_ids"], "loss_weight": batch["noise_weight"],
                  "noised_tokens": (batch["noise_weight"] != 0).sum()}
    else:
        noised = noise_batch(batch, mask_token_id, eps)
    device = next(model.parameters()).device
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    if thd is None:
        thd = model_takes_thd(model)
    output = model(**model_inputs(batch, noised["input_ids"].to(device), thd))
    return output, partial(_loss, weight=noised["loss_weight"], num_tokens=batch["response_mask"].sum(),
                           noised=noised["noised_tokens"])


def _loss(per_token_loss, *, weight, num_tokens, noised):
    from t3s_nemo.training.loss import masked_token_loss

    loss_sum, count, report = masked_token_loss(per_token_loss, weight, num_tokens=num_tokens)
    report["noised_tokens"] = noised.detach().float().reshape(())
    return loss_sum, count, report
