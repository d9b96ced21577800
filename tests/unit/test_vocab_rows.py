"""How many vocabulary rows a run's model has (t3s_nemo.training.setup.vocab_rows)."""

import pytest

from t3s_nemo.errors import T3SError
from t3s_nemo.training.setup import vocab_rows


def test_random_init_pads_the_tokenizer_for_tp():
    # Megatron-LM's make_vocab_size_divisible_by: 128 x tp
    assert [vocab_rows(151669, tp) for tp in (1, 2, 8)] == [151680, 151808, 152576]


def test_weights_keep_their_rows_at_any_tp():
    # Qwen3's HF checkpoints: 151,936 rows for 151,669 token ids, at every layout
    assert all(vocab_rows(151669, tp, 151936, "model.init hf", 151936) == 151936 for tp in (1, 2, 4, 8))


def test_weights_with_fewer_trained_rows_than_token_ids_are_refused():
    # a config.json vocab_size of 151,600 pads to 151,680 rows on import; 69 ids would get zero rows
    with pytest.raises(T3SError, match="model.init hf: 151600 vocabulary rows, fewer than the 151669 token ids"):
        vocab_rows(151669, 1, 151680, "model.init hf", 151600)
    with pytest.raises(T3SError, match="fewer than the 455 token ids"):  # a dLLM's extra mask id
        vocab_rows(455, 1, 454, "ckpt")
