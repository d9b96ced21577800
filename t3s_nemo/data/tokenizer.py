"""Local Hugging Face tokenizers: loading with clear errors, and a fingerprint of the vocabulary."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from t3s_nemo.errors import T3SError


def load_tokenizer(path: str | Path):
    """AutoTokenizer from a local directory (never the hub)."""
    path = Path(path)
    if not path.is_dir():
        raise T3SError(f"{path}: tokenizer directory not found")
    if not any((path / n).exists() for n in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        raise T3SError(f"{path}: not a Hugging Face tokenizer directory (no tokenizer.json or tokenizer_config.json)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # transformers raises many types for broken tokenizer files
        raise T3SError(f"{path}: cannot load tokenizer: {str(e).splitlines()[0]}") from None
    if tok.eos_token_id is None:
        raise T3SError(f"{path}: tokenizer has no eos_token; set one in tokenizer_config.json")
    return tok


def fingerprint(tok) -> str:
    """sha256 of the token -> id map (incl. added tokens): equal iff two tokenizers encode alike."""
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))
    h = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode("utf-8"))
    return "sha256:" + h.hexdigest()[:32]


def pad_id(tok) -> int:
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


_PROBE = "T3S_ANSWER_PROBE"


def stop_token_ids(tok) -> list[int]:
    """Token ids that end an answer: eos, then the chat template's end-of-turn token when it is another.

    A student packed with the chat template learns to end its turn with the template's end-of-turn token
    (Qwen3's <|im_end|>), and that is not every tokenizer's eos: Qwen3 Base's eos is <|endoftext|>, so
    sampling that stopped at eos alone would run every answer on to max_new_tokens (and the text past the
    turn would be verified). The end-of-turn token is read off the template: the first special token
    after an assistant message's content.
    """
    ids = [tok.eos_token_id]
    if not getattr(tok, "chat_template", None):
        return ids
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": _PROBE}]
    try:
        full = tok.apply_chat_template(msgs, tokenize=False)
    except Exception:  # a template that needs more than a plain exchange: eos alone
        return ids
    at = full.rfind(_PROBE)
    if at < 0:
        return ids
    special = set(tok.all_special_ids) | {i for i, t in tok.added_tokens_decoder.items() if t.special}
    for i in tok(full[at + len(_PROBE):], add_special_tokens=False)["input_ids"]:
        if i in special:
            if i not in ids:
                ids.append(i)
            break
    return ids
