"""`t3s config`: the resolved config, every key with its comment from config.py, loadable as a config."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from t3s_nemo.config import _all_keys, annotated_yaml, key_comments, load_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("config, overrides", [
    (REPO / "configs" / "tiny" / "sft.yaml", []),
    (REPO / "configs" / "qwen3_32b" / "sft.yaml", ["pipeline.baselines=[random,reverse]", "checkpoint.snapshot_window=[1,5]",
                                                    "model.norm_eps=1e-5", "data.system_prompt=Think: step by step #1"]),
])
def test_the_printed_config_loads_back_as_the_same_config(tmp_path, config, overrides):
    cfg = load_config(config, overrides)
    (tmp_path / "c.yaml").write_text(annotated_yaml(cfg))
    assert load_config(tmp_path / "c.yaml") == cfg


def test_every_key_is_printed_and_commented_keys_carry_their_comment():
    text = annotated_yaml(load_config(None))
    leaves = [k for k in _all_keys(load_config(None)) if "." in k]
    for key in leaves:
        section, name = key.split(".", 1)
        assert f"\n  {name}: " in text, key
    notes = key_comments()
    assert notes["train.lr_decay"] == "cosine | linear | constant"
    assert notes["checkpoint.save_interval"] == "full checkpoint every N steps (0 = only at the end)"
    assert notes["train.stop_at"].startswith("end this launch after this step")  # the comment lines above it
    assert notes["train"] == "Optimisation: AdamW, warmup + cosine decay, gradient clipping."
    assert "  lr_decay: cosine  # cosine | linear | constant\n" in text


def run_cli(monkeypatch, capsys, *args):
    from t3s_nemo.cli import main

    monkeypatch.setattr(sys, "argv", ["t3s", "config", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code
    return code, *capsys.readouterr()


def test_t3s_config_checks_the_layout_and_takes_overrides_without_a_file(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, REPO / "configs" / "qwen3_32b" / "sft.yaml", "--nproc-per-node", 8,
                           "--nnodes", 2)
    assert code == 0 and out.endswith("# layout: 16 processes = tp 8 x pp 2 x cp 1 x dp 1\n")
    code, _, err = run_cli(monkeypatch, capsys, REPO / "configs" / "qwen3_32b" / "sft.yaml", "--nproc-per-node", 8)
    assert code == 1 and "tp*pp*cp = 16 does not divide the world size 8" in err
    code, out, _ = run_cli(monkeypatch, capsys, "train.steps=3")
    assert code == 0 and "  steps: 3  # optimizer steps\n" in out
    code, _, err = run_cli(monkeypatch, capsys, "train.stepz=3")
    assert code == 1 and err.strip() == "error: override 'train.stepz=3': unknown config key 'train.stepz'; did you mean 'train.steps'?"


def test_string_keys_take_the_override_text_as_typed():
    cfg = load_config(None, ["data.system_prompt=Think: step by step #1", "data.path=''", "run_dir=runs/a: b"])
    assert cfg.data.system_prompt == "Think: step by step #1" and cfg.data.path == "" and cfg.run_dir == "runs/a: b"
    assert load_config(None, ['mask.channel="t3s_mask"']).mask.channel == "t3s_mask"
    assert load_config(None, ["train.lr=1e-5"]).train.lr == 1e-5  # other keys are still read as YAML
