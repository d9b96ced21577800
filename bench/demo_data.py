"""The bundled demo data packed at a sequence length, for benchmarks that run the real model on it."""

from __future__ import annotations

import tempfile
from pathlib import Path


def demo_packed(seq_length: int) -> Path:
    """Pack t3s_nemo/assets/demo/train.jsonl with its tokenizer into a fresh temporary directory."""
    from t3s_nemo.config import resolve_path  # first: it quiets megatron-core's import-time warnings
    from t3s_nemo.data.pack import PackOptions, pack

    out = Path(tempfile.mkdtemp()) / "data"
    assets = Path(resolve_path("pkg:assets/demo"))
    pack([assets / "train.jsonl"], assets / "tokenizer", out, PackOptions(seq_length=seq_length))
    return out
