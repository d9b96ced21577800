"""A launch into a run directory that holds a run either continues that run or is refused: resume=never
over it, or a resume with another learning rate, seed, batch, mask, model or dataset, would leave one run
directory describing two runs (and megatron's optimizer load fails with a traceback on a new lr)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from t3s_nemo.config import check_run_dir, load_config, save_config
from t3s_nemo.errors import T3SError

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny" / "sft.yaml"


def dataset(path: Path, source_hash: str) -> str:
    path.mkdir()
    (path / "meta.json").write_text(json.dumps({"source": {"hash": source_hash}, "num_examples": 8,
                                                "seq_length": 512}))
    return str(path)


@pytest.fixture
def run(tmp_path):
    """A run directory as a launch leaves it: config.yaml, a snapshot, a trajectory log."""
    root = tmp_path / "run"
    data = dataset(tmp_path / "data", "sha256:aa")
    save_config(load_config(TINY, [f"run_dir={root}", f"data.path={data}", "train.lr=1e-3"]), _mk(root) / "config.yaml")
    (root / "snapshots" / "step_1").mkdir(parents=True)
    (root / "trajectory.jsonl").write_text('{"step": 1, "loss": 5.0}\n')
    return root, data


def _mk(p: Path) -> Path:
    p.mkdir(parents=True)
    return p


def launch(root, data, *overrides):
    return load_config(TINY, [f"run_dir={root}", f"data.path={data}", "train.lr=1e-3", *overrides])


def test_the_same_run_resumes_with_more_steps_another_layout_or_moved_data(run, tmp_path):
    root, data = run
    check_run_dir(launch(root, data, "train.steps=50", "parallel.tp=2", "checkpoint.save_interval=5"))
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    check_run_dir(launch(root, moved))  # the same dataset at another path
    shutil.rmtree(data)
    check_run_dir(launch(root, moved))  # the recorded one is gone: nothing to tell them apart by


def test_resume_never_over_a_run_is_refused(run):
    root, data = run
    with pytest.raises(T3SError) as info:
        check_run_dir(launch(root, data, "resume=never"))
    assert str(info.value) == (
        f"{root}: holds a run already (snapshots, trajectory.jsonl); resume=never would train from step 0 into "
        "it and mix the two: use a new run_dir (or delete this one), or resume=auto to continue it")


@pytest.mark.parametrize("override, named", [
    ("train.lr=2e-3", "train.lr 0.001 -> 0.002"), ("train.seed=7", "train.seed 1234 -> 7"),
    ("train.global_batch_size=6", "train.global_batch_size 4 -> 6"), ("mask.channel=t3s_mask", "mask.channel '' -> 't3s_mask'"),
    ("model.num_layers=3", "model.num_layers null -> 3"),
])
def test_a_resume_that_changes_the_trajectory_is_refused(run, override, named):
    root, data = run
    with pytest.raises(T3SError) as info:
        check_run_dir(launch(root, data, override))
    msg = str(info.value)
    assert msg.startswith(f"{root}: this run was trained with other settings (") and named in msg
    assert "use the saved values, or a new run_dir" in msg


def test_a_resume_on_another_dataset_is_refused(run, tmp_path):
    root, data = run
    other = dataset(tmp_path / "other", "sha256:bb")
    with pytest.raises(T3SError, match=f"data.path {data} -> {other} \\(another dataset\\)"):
        check_run_dir(launch(root, other))


def test_a_repack_with_the_same_source_but_other_bins_is_another_dataset(run, tmp_path):
    root, data = run
    meta = json.loads((Path(data) / "meta.json").read_text())
    other = tmp_path / "repacked"
    other.mkdir()
    (other / "meta.json").write_text(json.dumps({**meta, "num_bins": 3, "template": "plain"}))
    with pytest.raises(T3SError, match="another dataset"):
        check_run_dir(launch(root, str(other)))


def test_model_init_spelled_another_way_is_the_same_run(tmp_path, monkeypatch):
    root = tmp_path / "run"
    init = tmp_path / "init" / "step_0"
    init.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    save_config(load_config(TINY, [f"run_dir={root}", "model.init=init/step_0"]), _mk(root) / "config.yaml")
    (root / "trajectory.jsonl").write_text('{"step": 1, "loss": 5.0}\n')
    check_run_dir(load_config(TINY, [f"run_dir={root}", f"model.init={init}"]))
    (tmp_path / "init" / "step_9").mkdir()
    with pytest.raises(T3SError, match="model.init 'init/step_0' -> "):
        check_run_dir(load_config(TINY, [f"run_dir={root}", f"model.init={tmp_path / 'init' / 'step_9'}"]))


def test_an_empty_or_new_run_dir_is_never_refused(tmp_path):
    check_run_dir(load_config(TINY, [f"run_dir={tmp_path / 'new'}", "resume=never"]))
    (tmp_path / "empty" / "snapshots").mkdir(parents=True)  # made, nothing saved yet
    check_run_dir(load_config(TINY, [f"run_dir={tmp_path / 'empty'}", "resume=never", "train.lr=1"]))


def test_the_training_recipe_checks_before_it_starts(run):
    from t3s_nemo.recipes.train import parse_args

    root, data = run
    with pytest.raises(T3SError, match="train.lr 0.001 -> 0.002"):
        parse_args([str(TINY), f"run_dir={root}", f"data.path={data}", "train.lr=2e-3"])


def test_a_run_dir_that_is_a_file_or_inside_the_dataset_is_refused(run, tmp_path):
    _, data = run
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(T3SError, match=r"config key 'run_dir': .*notes.txt is a file; expected a directory"):
        check_run_dir(load_config(TINY, [f"run_dir={tmp_path / 'notes.txt'}", f"data.path={data}"]))
    for inside in (data, f"{data}/runs/a"):
        with pytest.raises(T3SError, match=r"is inside the packed dataset data.path="):
            check_run_dir(load_config(TINY, [f"run_dir={inside}", f"data.path={data}"]))
    check_run_dir(load_config(TINY, [f"run_dir={tmp_path / 'r'}", f"data.path={tmp_path / 'r' / 'data'}"]))  # run_dir/data
