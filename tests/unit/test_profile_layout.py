"""The layout `t3s profile RUN` (and the pipeline, and slurm/profile.sbatch) profiles a run in."""

from pathlib import Path

import pytest

from t3s_nemo.config import load_config
from t3s_nemo.trajectory.profile import run_layout

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cfg_32b():
    return load_config(REPO / "configs" / "qwen3_32b" / "sft.yaml")  # tp=8 pp=2


@pytest.mark.parametrize("world,layout", [
    (16, (8, 2)), (32, (8, 2)),  # the run's own layout; more processes become data-parallel
    (8, (8, 1)), (24, (8, 1)),   # one 8-GPU node: drop pipeline stages first, keep every weight split 8 ways
    (4, (4, 1)), (12, (4, 1)), (1, (1, 1)),
])
def test_a_run_is_profiled_in_its_layout_or_the_largest_that_fits(cfg_32b, world, layout):
    overrides, note = run_layout(cfg_32b, world)
    assert overrides == [f"parallel.tp={layout[0]}", f"parallel.pp={layout[1]}"]
    assert (note is None) == (layout == (8, 2))
    if note:
        assert f"profiling at tp={layout[0]} pp={layout[1]}" in note and "tp=8 pp=2" in note


def test_given_sizes_win(cfg_32b):
    assert run_layout(cfg_32b, 8, tp=4) == (["parallel.tp=4", "parallel.pp=2"], None)
    assert run_layout(cfg_32b, 8, tp=2, pp=2) == (["parallel.tp=2", "parallel.pp=2"], None)
    # both given and not fitting: passed on as they are, for the recipe's own error
    assert run_layout(cfg_32b, 6, tp=4, pp=2) == (["parallel.tp=4", "parallel.pp=2"], None)


def test_context_parallelism_becomes_data_parallelism(cfg_32b):
    cfg_32b.parallel.cp = 2
    assert run_layout(cfg_32b, 32) == (["parallel.tp=8", "parallel.pp=2"], None)


def test_profile_run_takes_selector_overrides_only(tmp_path):
    import shutil

    from t3s_nemo.errors import T3SError
    from t3s_nemo.trajectory.profile import load_profile_config

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(REPO / "configs" / "qwen3_32b" / "sft.yaml", run / "config.yaml")
    cfg = load_profile_config(run, ["profile.selector_base=/ckpt/8b-step0", "profile.selector_bottleneck=/ckpt/8b-b"])
    assert (cfg.profile.selector_base, cfg.profile.selector_bottleneck) == ("/ckpt/8b-step0", "/ckpt/8b-b")
    with pytest.raises(T3SError, match=r"override 'train.lr=1': `t3s profile RUN` takes profile.\* and data.path"):
        load_profile_config(run, ["train.lr=1"])


def test_a_pipeline_rerun_knows_a_profile_made_by_the_configured_selectors(tmp_path, packed_copy):
    """Stage 3 is done when delta was profiled with the selectors the config names: the run's own
    theta_0/theta_b, or profile.selector_* (which a rerun once took for a stale profile and redid)."""
    import json

    import numpy as np

    from t3s_nemo.data.packed import PackedDataset
    from t3s_nemo.trajectory.pipeline import profiled

    sft = tmp_path / "sft"
    dirs = {n: sft / "snapshots" / n for n in ("step_0", "step_3")} | {n: tmp_path / "sel" / n for n in ("b0", "bb")}
    for d in dirs.values():
        d.mkdir(parents=True)
        (d / "t3s.json").write_text(json.dumps({"objective": "ar"}))
    (sft / "bottleneck.json").write_text(json.dumps({"bottleneck_dir": str(dirs["step_3"])}))
    own = load_config(REPO / "configs" / "tiny" / "sft.yaml")
    chosen = load_config(REPO / "configs" / "tiny" / "sft.yaml", [f"profile.selector_base={dirs['b0']}",
                                                                 f"profile.selector_bottleneck={dirs['bb']}"])

    def profile_with(base, bottleneck):
        ds = PackedDataset(packed_copy)
        zeros = {eid: np.zeros(len(ds.read_example(i)) - int(ds.prompt_lengths[i]), np.float32)
                 for i, eid in enumerate(ds.ids)}
        ds.add_channel("delta", zeros, "float32", span="response", overwrite=True,
                       info={"selector_base": str(base), "selector_bottleneck": str(bottleneck)})
        return PackedDataset(packed_copy)

    assert not profiled(PackedDataset(packed_copy), sft, own)  # no delta yet
    ds = profile_with(dirs["step_0"], dirs["step_3"])
    assert profiled(ds, sft, own) and not profiled(ds, sft, chosen)
    ds = profile_with(dirs["b0"], dirs["bb"])
    assert profiled(ds, sft, chosen) and not profiled(ds, sft, own)
