"""The real GPTModel with the T3S loss hook, in one process (a subprocess, CPU mode)."""

from procs import run_script


def test_packed_masked_and_all_masked_behaviour(tiny_data):
    r = run_script("model_checks.py", tiny_data)
    # packed bins with the block-diagonal mask give each example the loss it has alone
    assert r["examples_compared"] >= 2
    assert r["packed_vs_unpacked_max_abs_diff"] < 1e-5
    # changing the targets of zero-weight tokens changes neither the loss nor any gradient
    assert r["masked_positions"] > 0
    assert r["masked_labels_loss_diff"] == 0.0
    assert r["masked_labels_grad_diff"] == 0.0
    # an all-masked micro-batch: zero loss, zero count, zero and finite gradients (never NaN)
    assert r["all_masked_loss"] == 0.0 and r["all_masked_count"] == 0
    assert r["all_masked_grads_finite"] and r["all_masked_grad_max"] == 0.0
