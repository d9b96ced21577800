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
