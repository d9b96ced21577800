"""The FLOPs behind the logged MFU: attention costs sum(n_i^2) of the packed examples, not the bin's length."""

import numpy as np
import pytest

from t3s_nemo.model.qwen3 import PRESETS, flops_per_token, step_flops


def test_one_example_filling_the_bin_is_the_per_token_formula():
    shape = PRESETS["qwen3_8b"]
    assert step_flops(shape, 151936, 16384, 16384**2) == pytest.approx(flops_per_token(shape, 151936, 16384) * 16384)


def test_packed_examples_attend_only_within_themselves():
    shape = PRESETS["qwen3_8b"]
    s, q, L = 16384, shape.num_attention_heads * shape.head_dim, shape.num_layers
    whole, halves = step_flops(shape, 151936, s, s**2), step_flops(shape, 151936, s, 2 * (s // 2) ** 2)
    assert whole - halves == pytest.approx(6 * L * q * s**2 / 2)
    # at 16k the attention of one 16k example is about a fifth of the step's work
    assert 0.15 < (whole - step_flops(shape, 151936, s, 0)) / whole < 0.3
    # a bidirectional (dLLM) model attends to the whole example: twice the causal attention
    bi = step_flops(shape, 151936, s, s**2, bidirectional=True)
    assert bi - whole == pytest.approx(whole - step_flops(shape, 151936, s, 0))


def test_sum_of_squared_lengths_of_collated_bins(demo_packed):
    from t3s_nemo.data.dataset import PackedBins, collate
    from t3s_nemo.data.packed import PackedDataset
    from t3s_nemo.training.data import sum_sq_lengths

    ds = PackedDataset(demo_packed[0])
    bins = PackedBins(ds)
    chosen = [0, 3, 5]
    expected = sum(float(ds.sequence_lengths[i]) ** 2 for b in chosen for i in ds.bin_range(b))
    assert sum_sq_lengths([collate([bins[0], bins[3]]), collate([bins[5]])]) == expected
    assert expected < sum(np.sum(ds.sequence_lengths[list(ds.bin_range(b))]) for b in chosen) * ds.seq_length
