"""The real GPTModel with the T3S loss hook, in one process (a subprocess, CPU mode).

Both attention specs without Transformer Engine: sdpa (the default: torch's scaled_dot_product_attention,
with THD packing for long bins, sdpa_thd here, and the block-diagonal mask for short ones) and
megatron-core's local spec (block-diagonal mask).
"""

import pytest

from procs import run_script


@pytest.fixture(scope="module")
def checks(tiny_data):
    return run_script("model_checks.py", tiny_data)


@pytest.mark.parametrize("spec", ["sdpa_thd", "sdpa", "local"])
def test_packed_masked_and_all_masked_behaviour(checks, spec):
    r = checks[spec]
    # 512-token bins: below SDPA_THD_MIN_TOKENS the sdpa spec takes the block mask too; a forward step
    # that is not told detects THD from the SDPAttention layers (always correct, the mask is faster)
    assert r["packed_thd"] is False
    assert r["detected_thd"] is spec.startswith("sdpa")
    # packed bins give each example the loss it has alone
    assert r["examples_compared"] >= 2
    assert r["packed_vs_unpacked_max_abs_diff"] < 1e-5
    # changing the targets of zero-weight tokens changes neither the loss nor any gradient
    assert r["masked_positions"] > 0
    assert r["masked_labels_loss_diff"] == 0.0
    assert r["masked_labels_grad_diff"] == 0.0
    # an all-masked micro-batch: zero loss, zero count, zero and finite gradients (never NaN)
    assert r["all_masked_loss"] == 0.0 and r["all_masked_count"] == 0
    assert r["all_masked_grads_finite"] and r["all_masked_grad_max"] == 0.0
    # bidirectional attention (dLLM): a token sees later tokens of its example, never other examples
    assert r["bidirectional_sees_later_token"] > 1e-4
    assert r["bidirectional_other_examples_diff"] == 0.0


@pytest.mark.parametrize("variant", ["sdpa_thd", "sdpa"])
def test_sdpa_matches_megatron_local_attention(checks, variant):
    """On the same weights, SDPAttention (THD or masked) gives megatron's DotProductAttention's losses and
    gradients."""
    assert checks[f"{variant}_vs_local_weights_equal"]
    assert checks[f"{variant}_vs_local_loss_diff"] < 1e-5
    assert checks[f"{variant}_vs_local_grad_diff"] < 1e-6
    assert checks[f"{variant}_vs_local_bidirectional_diff"] < 1e-5
