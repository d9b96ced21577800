"""AR loss masks and dLLM targets are both uint8 channels, with opposite meanings (1 = train on the token;
1 = always noise it): each objective refuses the other's, read off the rule `t3s mask` recorded, and
`t3s pipeline` (the AR recipe: causal log p) refuses a dLLM config before it writes anything."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from t3s_nemo.config import load_config
from t3s_nemo.data.packed import PackedDataset
from t3s_nemo.errors import T3SError

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny" / "sft.yaml"


@pytest.fixture
def masked(packed_copy):
    ds = PackedDataset(packed_copy)
    ones = {eid: np.ones(len(ds.read_example(i)) - int(ds.prompt_lengths[i]), np.uint8) for i, eid in enumerate(ds.ids)}
    ds.add_channel("t3s_mask", ones, "uint8", span="response", info={"rule": "ar"})
    ds.add_channel("mask_dllm", ones, "uint8", span="response", info={"rule": "dllm", "tau": 0.2})
    # `t3s data mix` keeps each teacher's channel info under inputs
    ds.add_channel("mixed_targets", ones, "uint8", span="response",
                   info={"inputs": {"r1": {"rule": "dllm"}, "qwq": {"rule": "dllm"}}})
    return PackedDataset(packed_copy)


def cfg_for(ds, *overrides):
    return load_config(TINY, [f"data.path={ds.path}", *overrides])


def test_ar_training_takes_ar_masks_and_refuses_dllm_targets(masked):
    from t3s_nemo.training.data import open_training_data

    assert len(open_training_data(cfg_for(masked, "mask.channel=t3s_mask"), masked)) == masked.num_bins
    for channel in ("mask_dllm", "mixed_targets"):
        with pytest.raises(T3SError, match=f"config key 'mask.channel': '{channel}' holds masked-diffusion targets"):
            open_training_data(cfg_for(masked, f"mask.channel={channel}"), masked)


def test_dllm_training_takes_targets_and_refuses_ar_masks(masked):
    from t3s_nemo.dllm.training import open_dllm_data

    for channel in ("mask_dllm", "mixed_targets"):
        open_dllm_data(cfg_for(masked, "model.objective=dllm", f"mask.channel={channel}"), masked)
    with pytest.raises(T3SError, match=r"'t3s_mask' is an AR loss mask \(rule ar\); with model.objective=dllm"):
        open_dllm_data(cfg_for(masked, "model.objective=dllm", "mask.channel=t3s_mask"), masked)


def test_mask_rule_dllm_needs_the_dllm_objective():
    with pytest.raises(T3SError, match="config key 'mask.rule': dllm marks masked-diffusion targets"):
        load_config(TINY, ["mask.rule=dllm"])
    assert load_config(TINY, ["mask.rule=dllm", "model.objective=dllm"]).mask.rule == "dllm"


def test_the_pipeline_refuses_a_dllm_config_before_writing(tmp_path):
    from t3s_nemo.trajectory.pipeline import run_pipeline

    with pytest.raises(T3SError, match="config key 'model.objective': dllm; `t3s pipeline` runs the AR recipe"):
        run_pipeline(TINY, [f"run_dir={tmp_path / 'run'}", "model.objective=dllm"])
    assert not (tmp_path / "run").exists()


def test_profile_refuses_dllm_selectors_before_launching(tmp_path):
    """`t3s profile` reads the selectors' markers in the launcher: a dLLM run's snapshots are refused
    there, and AR selectors named by profile.selector_* are taken instead."""
    import json

    from t3s_nemo.trajectory.profile import selectors

    run = tmp_path / "run"
    for name, objective in (("dllm_0", "dllm"), ("dllm_3", "dllm"), ("ar_0", "ar"), ("ar_3", "ar")):
        (run / "snapshots" / name).mkdir(parents=True)
        (run / "snapshots" / name / "t3s.json").write_text(json.dumps({"objective": objective}))
    (run / "bottleneck.json").write_text(json.dumps({"bottleneck_dir": str(run / "snapshots" / "dllm_3")}))
    cfg = load_config(TINY, ["model.objective=dllm", f"profile.selector_base={run / 'snapshots' / 'dllm_0'}"])
    with pytest.raises(T3SError, match="dllm_0: a dllm checkpoint; the profile is causal log p"):
        selectors(run, cfg)
    ar = [str(run / "snapshots" / n) for n in ("ar_0", "ar_3")]
    cfg = load_config(TINY, ["model.objective=dllm", f"profile.selector_base={ar[0]}",
                             f"profile.selector_bottleneck={ar[1]}"])
    assert [str(p) for p in selectors(run, cfg)] == ar
