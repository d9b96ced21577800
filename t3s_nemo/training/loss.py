"""The T3S loss hook: per-token weighted cross-entropy in megatron-core's per-token loss mode.

Weights come from dataset channels (loss_mask on response tokens x the T3S mask). The loss of a global
batch is sum(w * ce) / sum(w) over *all* its tokens: each micro-batch returns its weighted sum and its
token count, megatron-core's schedule adds the counts over micro-batches and `finalize_model_grads`
all-reduces them over pipeline, data- and context-parallel ranks and divides the gradients once. A
per-micro-batch mean would up-weight the few surviving tokens of heavily masked micro-batches.

Using it from a Megatron-Bridge or Megatron-LM training script:

    from t3s_nemo.training.loss import t3s_forward_step
    # model config: calculate_per_token_loss=True (and DDP average_in_collective=False)
    pretrain(config, forward_step_func=t3s_forward_step)   # batches as produced by t3s_nemo.data

or keep your own forward step and return `output, partial(masked_token_loss, loss_weight=w)`.
"""

from __future__ import annotations

from functools import partial
from typing import Iterator, Optional

import torch


def masked_token_loss(
    per_token_loss: torch.Tensor,
    loss_weight: torch.Tensor,
    num_tokens: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(weighted loss sum, token count, report) for one micro-batch, as megatron's schedules expect.

    per_token_loss: [b, s] cross-entropy from the model (labels given to forward).
    loss_weight: [b, s] weights; 0 drops a token. With 0/1 weights the count is the number of
    trained tokens; num_tokens overrides the normaliser (the dLLM objective divides by the number of
    response tokens, not by the number of noised ones).
    Returns a zero loss with zero gradient, never NaN, when every weight is 0.
    """
    w = loss_weight.to(per_token_loss.device, torch.float32).reshape(per_token_loss.shape)
    ce = per_token_loss.float()
    # where() rather than ce * w: a masked position with an inf/NaN loss must not leak into the sum
    loss_sum = torch.where(w != 0, ce * w, torch.zeros_like(ce)).sum()
    count = w.sum() if num_tokens is None else num_tokens.float()
    # megatron-core sums token counts as int32 tensors
    count_int = count.round().to(torch.int)
    report = {"loss_sum_and_count": torch.stack([loss_sum.detach(), count.detach()])}
    return loss_sum, count_int, report


def batch_to_model_inputs(batch: dict[str, torch.Tensor], thd: bool) -> dict:
    """Model kwargs for a packed micro-batch: THD packing (cu_seqlens) or a block-diagonal mask
    (`ModelBundle.packed_thd` says which: THD on Transformer Engine and on sdpa for long bins)."""
    from t3s_nemo.data.dataset import block_causal_mask

    if thd:
        from megatron.core.packed_seq_params import PackedSeqParams

        cu = batch["cu_seqlens"].to(torch.int32)
        # context parallelism (training/context_parallel.py): examples padded to multiples of 2 x cp
        cu_padded = batch.get("cu_seqlens_padded")
        cu_padded = None if cu_padded is None else cu_padded.to(torch.int32)
        max_len = int(((cu if cu_padded is None else cu_padded).diff()).max())
        return dict(
            input_ids=batch["tokens"].reshape(1, -1),
            position_ids=batch["position_ids"].reshape(1, -1),
            attention_mask=None,
            labels=batch["labels"].reshape(1, -1),
            packed_seq_params=PackedSeqParams(
                qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=max_len, max_seqlen_kv=max_len,
                cu_seqlens_q_padded=cu_padded, cu_seqlens_kv_padded=cu_padded,
            ),
        )
    return dict(
        input_ids=batch["tokens"],
        position_ids=batch["position_ids"],
        attention_mask=block_causal_mask(batch["segment_ids"]),
        labels=batch["labels"],
    )


def schedule_shape(thd: bool, seq_length: int, micro_batch_size: int) -> dict:
    """seq_length and micro_batch_size for get_forward_backward_func, which sizes the activations sent
    between pipeline stages from them: [seq_length, micro_batch_size, hidden]. THD packs a micro-batch
    into one sequence, [micro_batch_size x seq_length, 1, hidden]."""
    if thd:
        return {"seq_length": seq_length * micro_batch_size, "micro_batch_size": 1}
    return {"seq_length": seq_length, "micro_batch_size": micro_batch_size}


def t3s_forward_step(data_iterator: Iterator[dict], model, thd: Optional[bool] = None):
    """forward_step_func for megatron-core's get_forward_backward_func (and Megatron-Bridge).

    Each item of data_iterator is a collated packed micro-batch (t3s_nemo.data.dataset.collate) whose
    `loss_weight` already holds loss_mask x T3S mask.
    """
    batch = next(data_iterator)
    device = next(model.parameters()).device
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    if thd is None:
        thd = model_takes_thd(model)
    output = model(**batch_to_model_inputs(batch, thd))
    # on pipeline stages before the last, output is a hidden state and the loss function is not called
    return output, partial(masked_token_loss, loss_weight=batch["loss_weight"])


def model_takes_thd(model) -> bool:
    """Whether a model takes packed examples as THD + cu_seqlens: Transformer Engine or SDPAttention layers."""
    from t3s_nemo.model.attention import SDPAttention

    return has_te_layers(model) or any(isinstance(m, SDPAttention) for m in model.modules())


def has_te_layers(model) -> bool:
    """Whether a model is built from Transformer Engine layers (which take THD, not an arbitrary mask)."""
    from t3s_nemo.devices import te_available

    if not te_available():
        return False
    import transformer_engine.pytorch as te

    return any(isinstance(m, te.module.base.TransformerEngineBaseModule) for m in model.modules())
