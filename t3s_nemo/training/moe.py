"""MoE pieces of the training loop: the load-balancing aux loss's scale, and reading it for the log.

megatron-core adds the router's aux loss to the gradients through MoEAuxLossAutoScaler (set up by its
pipeline schedules on every forward step) and records its unscaled value per layer in the MoE metrics
tracker. Two things differ here from a Megatron-LM pretraining run:

- Scale. In per-token loss mode (calculate_per_token_loss, which the T3S loss needs) megatron
  pre-multiplies each micro-batch's aux loss by its number of positions, so that dividing every gradient
  by the step's *loss-token* count (finalize_model_grads) leaves coeff x the aux loss averaged over the
  micro-batches -- which holds only when every position is a loss token. With response-only (and T3S
  masked, or dLLM) losses the count is smaller, so `AuxLossScale` multiplies the aux gradient by
  (loss tokens / positions) of the step, restoring coeff x mean aux loss whatever the masking.
- Logging. `aux_loss_sum` takes this rank's recorded values (summed over layers and micro-batches) and
  clears the tracker; the recipe all-reduces the sum and divides by dp x micro-batches x MoE layers
  (megatron's own reduction uses ReduceOp.AVG, which gloo lacks).
"""

from __future__ import annotations

import torch

AUX_LOSS_NAME = "load_balancing_loss"  # megatron-core's tracker name for the "aux_loss" balancing type


def step_token_counts(batches: list[dict], dllm: bool) -> tuple[float, float]:
    """(loss tokens, positions) of this rank's micro-batches: the loss functions' normaliser
    (dLLM: response tokens; AR: the rounded loss weights per micro-batch) and the router's token count."""
    if dllm:
        loss_tokens = sum(float(b["response_mask"].sum()) for b in batches)
    else:
        loss_tokens = sum(float(b["loss_weight"].float().sum().round()) for b in batches)
    positions = sum(float(b["tokens"].numel()) for b in batches)
    return loss_tokens, positions


class AuxLossScale:
    """TransformerConfig.moe_grad_scale_func: loss tokens / positions of the current step (global)."""

    def __init__(self):
        self.value = 1.0

    def set(self, loss_tokens: float, positions: float) -> None:
        self.value = loss_tokens / positions if positions else 1.0

    def __call__(self) -> torch.Tensor:
        return torch.tensor(self.value, dtype=torch.float32)


def aux_loss_sum() -> float:
    """This rank's recorded load-balancing loss (unscaled by the coefficient), summed over its MoE layers
    and the step's micro-batches; clears the tracker for the next step."""
    from megatron.core.transformer.moe.moe_logging import get_moe_metrics_tracker

    tracker = get_moe_metrics_tracker()
    entry = tracker.metrics.get(AUX_LOSS_NAME)
    total = float(entry.values.sum()) if entry is not None else 0.0
    tracker.clear()
    return total
