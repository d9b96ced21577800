"""The T3S loss hook against hand computations (pure torch, no model)."""

import math

import torch

from t3s_nemo.training.loss import masked_token_loss


def test_weighted_sum_and_count_match_hand_computation():
    ce = torch.tensor([[2.0, 1.0, 4.0, 0.5]])
    w = torch.tensor([[1.0, 0.0, 1.0, 1.0]])
    loss_sum, count, report = masked_token_loss(ce, w)
    assert loss_sum.item() == 2.0 + 4.0 + 0.5
    assert count.item() == 3 and count.dtype == torch.int
    assert report["loss_sum_and_count"].tolist() == [6.5, 3.0]


def test_global_normalisation_is_not_a_mean_of_micro_batch_means():
    # micro-batch A: 3 trained tokens, B: 1 (heavily masked); the step's loss is sum / 4 over both
    a_ce, a_w = torch.tensor([1.0, 1.0, 1.0, 9.0]), torch.tensor([1.0, 1.0, 1.0, 0.0])
    b_ce, b_w = torch.tensor([5.0, 7.0, 7.0, 7.0]), torch.tensor([1.0, 0.0, 0.0, 0.0])
    sa, ca, _ = masked_token_loss(a_ce, a_w)
    sb, cb, _ = masked_token_loss(b_ce, b_w)
    global_loss = (sa + sb) / (ca + cb)
    assert global_loss.item() == (3 * 1.0 + 5.0) / 4
    assert global_loss.item() != ((sa / ca + sb / cb) / 2).item()


def test_all_masked_is_zero_with_zero_gradient_even_with_inf_losses():
    ce = torch.tensor([[3.0, math.inf, float("nan")]], requires_grad=True)
    w = torch.zeros(1, 3)
    loss_sum, count, _ = masked_token_loss(ce, w)
    assert loss_sum.item() == 0.0 and count.item() == 0
    (loss_sum / count.clamp(min=1)).backward()  # what megatron does with the global count
    assert torch.equal(ce.grad, torch.zeros(1, 3))


def test_masked_positions_get_no_gradient_and_weights_reshape_to_the_loss():
    ce = torch.tensor([[2.0, 1.0], [4.0, 3.0]], requires_grad=True)
    w = torch.tensor([1.0, 0.0, 0.0, 1.0])  # flat weights, as THD batches carry them
    loss_sum, count, _ = masked_token_loss(ce, w)
    loss_sum.backward()
    assert loss_sum.item() == 5.0 and count.item() == 2
    assert ce.grad.tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_explicit_normaliser_overrides_the_weight_sum():
    ce = torch.tensor([1.0, 2.0, 3.0])
    w = torch.tensor([2.0, 0.0, 4.0])  # e.g. dLLM 1/t weights on noised tokens
    loss_sum, count, report = masked_token_loss(ce, w, num_tokens=torch.tensor(3))
    assert loss_sum.item() == 2.0 + 12.0
    assert count.item() == 3
