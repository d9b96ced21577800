"""Fixtures for tests that start real processes; the helpers they use live in procs.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from procs import DEMO


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """The first 48 demo examples packed at seq_length 512 (about 12 bins)."""
    from t3s_nemo.data.pack import PackOptions, pack

    d = tmp_path_factory.mktemp("data")
    lines = (DEMO / "train.jsonl").read_text().splitlines()[:48]
    (d / "train.jsonl").write_text("\n".join(lines) + "\n")
    pack([d / "train.jsonl"], DEMO / "tokenizer", d / "packed", PackOptions(seq_length=512))
    return d / "packed"


@pytest.fixture(scope="session")
def chat_prompts():
    """Three chat-formatted prompts of different lengths (token ids), for the samplers."""
    from t3s_nemo.data.tokenizer import load_tokenizer

    tok = load_tokenizer(DEMO / "tokenizer")
    texts = ["What is 2 + 2?", "Start with 5. Subtract 5, then add 8, then multiply by 3. What is the result?", "Hi"]
    return [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=True,
                                    return_dict=False) for t in texts]
