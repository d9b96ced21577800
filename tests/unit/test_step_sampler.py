"""The step-to-bins schedule: seeded, resumable, and the same for every data-parallel layout."""

import numpy as np

from t3s_nemo.trajectory.masks import anchor_mask, dllm_targets, get_rule, reverse_mask
from t3s_nemo.training.data import StepSampler


def test_each_epoch_is_a_permutation_and_steps_tile_the_stream():
    s = StepSampler(num_bins=10, global_batch=4, seed=3)
    stream = np.concatenate([s.step_bins(k) for k in range(5)])  # 20 samples = 2 epochs
    assert sorted(stream[:10]) == list(range(10))
    assert sorted(stream[10:]) == list(range(10))
    assert not np.array_equal(stream[:10], stream[10:])  # reshuffled per epoch


def test_same_seed_same_order_and_resume_needs_only_the_step():
    a, b = StepSampler(37, 8, seed=5), StepSampler(37, 8, seed=5)
    for k in (0, 3, 11):
        assert np.array_equal(a.step_bins(k), b.step_bins(k))
    assert not np.array_equal(StepSampler(37, 8, seed=6).step_bins(0), a.step_bins(0))


def test_no_shuffle_is_in_order():
    assert StepSampler(5, 3, seed=0, shuffle=False).step_bins(1).tolist() == [3, 4, 0]


def test_anchor_rules_partition_the_response_tokens():
    delta = np.array([0.5, -0.1, 0.0, 2.0, -0.3], dtype=np.float32)
    assert anchor_mask(delta).tolist() == [0, 1, 1, 0, 1]  # anchors (delta > 0) dropped
    assert reverse_mask(delta).tolist() == [1, 0, 0, 1, 0]
    assert (anchor_mask(delta) + reverse_mask(delta) == 1).all()
    assert dllm_targets(delta, 0.2).tolist() == [0, 0, 0, 0, 1]
    assert get_rule("ar") is anchor_mask


def test_the_start_line_counts_epochs_and_warns_when_a_step_repeats_bins():
    from t3s_nemo.training.data import data_coverage

    assert data_coverage(73, 8, 40) == ("4.4 epochs of 73 bins", None)
    text, note = data_coverage(3, 8, 10)
    assert text == "26.7 epochs of 3 bins"
    assert "3 packed bin(s), fewer than train.global_batch_size=8: every step trains on some bins twice" in note
    # the sampler does what the note says: one step holds a bin more than once
    assert len(set(StepSampler(3, 8, seed=0).step_bins(0).tolist())) == 3
