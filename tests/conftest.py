"""Shared fixtures: the bundled demo data and tokenizer, and one packed demo dataset per session."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("T3S_NO_PROGRESS", "1")

import t3s_nemo  # noqa: E402

DEMO = Path(t3s_nemo.__file__).parent / "assets" / "demo"
DEMO_SEQ_LENGTH = 512


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    return DEMO


@pytest.fixture(scope="session")
def demo_tokenizer_dir() -> Path:
    return DEMO / "tokenizer"


@pytest.fixture(scope="session")
def demo_tokenizer(demo_tokenizer_dir):
    from t3s_nemo.data.tokenizer import load_tokenizer

    return load_tokenizer(demo_tokenizer_dir)


@pytest.fixture(scope="session")
def no_chat_tokenizer_dir(tmp_path_factory, demo_tokenizer_dir) -> Path:
    """The demo tokenizer without its chat template."""
    out = tmp_path_factory.mktemp("tok_nochat")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(demo_tokenizer_dir / name, out / name)
    assert "chat_template" not in json.loads((out / "tokenizer_config.json").read_text())
    return out


@pytest.fixture(scope="session")
def base_like_tokenizer_dir(tmp_path_factory, demo_tokenizer_dir) -> Path:
    """The demo tokenizer with eos <|endoftext|>, as Qwen3 Base tokenizers have, while its chat template
    still ends a turn with <|im_end|>."""
    out = tmp_path_factory.mktemp("tok_base")
    for f in demo_tokenizer_dir.iterdir():
        shutil.copy(f, out / f.name)
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    cfg["eos_token"] = "<|endoftext|>"
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    return out


@pytest.fixture(scope="session")
def demo_records() -> list[dict]:
    """The 256 demo training examples as dicts (id, prompt, response, answer)."""
    return [json.loads(line) for line in (DEMO / "train.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def demo_packed(tmp_path_factory, demo_tokenizer_dir):
    """(path, PackSummary) of the demo training set packed at seq_length 512; treat as read-only."""
    from t3s_nemo.data.pack import PackOptions, pack

    out = tmp_path_factory.mktemp("packed") / "demo"
    summary = pack([DEMO / "train.jsonl"], demo_tokenizer_dir, out, PackOptions(seq_length=DEMO_SEQ_LENGTH))
    return out, summary


@pytest.fixture
def packed_copy(demo_packed, tmp_path) -> Path:
    """A private copy of the packed demo dataset that a test may change."""
    dst = tmp_path / "packed"
    shutil.copytree(demo_packed[0], dst)
    return dst


@pytest.fixture
def write_jsonl():
    """write_jsonl(path, rows) writes dicts (or raw str lines) one per line and returns the path."""

    def write(path: Path, rows) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        return path

    return write


def pytest_collection_modifyitems(config, items):
    """With pytest-xdist (`-n`, on by default in pyproject.toml), keep each test file on one worker, so its
    module-scoped reference runs are made once, and every Slurm test on the same worker, so one test
    cluster serves them all (`--dist loadgroup`). Tests marked gpu are skipped without CUDA."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        import torch

        if not torch.cuda.is_available():
            for item in gpu:
                item.add_marker(pytest.mark.skip(reason="needs CUDA"))
    for item in items:
        path = Path(str(item.fspath))
        group = "slurm" if "slurm" in path.parent.parts else path.name
        item.add_marker(pytest.mark.xdist_group(group))
