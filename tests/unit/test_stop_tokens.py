"""Which tokens end a sampled answer: eos, and the chat template's end of turn when the tokenizer's eos is
another token (Qwen3 Base: eos <|endoftext|>, turns end with <|im_end|>)."""

from t3s_nemo.data.tokenizer import load_tokenizer, stop_token_ids
from t3s_nemo.trajectory.generate import _sample


def test_eos_that_ends_the_turn_is_the_only_stop(demo_tokenizer):
    assert stop_token_ids(demo_tokenizer) == [demo_tokenizer.eos_token_id]  # <|im_end|> is both


def test_a_base_tokenizer_also_stops_at_the_end_of_turn(base_like_tokenizer_dir):
    tok = load_tokenizer(base_like_tokenizer_dir)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.eos_token == "<|endoftext|>"
    assert stop_token_ids(tok) == [tok.eos_token_id, im_end]


def test_without_a_chat_template_eos_alone(no_chat_tokenizer_dir):
    tok = load_tokenizer(no_chat_tokenizer_dir)
    assert stop_token_ids(tok) == [tok.eos_token_id]


def test_a_sample_ends_at_its_first_stop_token(base_like_tokenizer_dir):
    tok = load_tokenizer(base_like_tokenizer_dir)
    stops = stop_token_ids(tok)
    answer = tok("The result is \\boxed{7}.", add_special_tokens=False)["input_ids"]
    # after its turn a Base student runs on: a new turn with another answer, then eos
    rest = tok("<|im_start|>user\nmore\\boxed{9}", add_special_tokens=False)["input_ids"]
    s = _sample(tok, answer + [stops[1]] + rest + [stops[0]], stops)
    assert s.num_tokens == len(answer) + 1 and s.text == "The result is \\boxed{7}."
    assert _sample(tok, answer, stops).num_tokens == len(answer)  # ran to the end: nothing to cut
