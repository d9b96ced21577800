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
