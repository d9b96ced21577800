"""Snapshot and checkpoint retention, and the disk estimate printed at start."""

import subprocess
import sys

import pytest

from procs import REPO, TINY, env, train


def kept(path):
    return sorted(int(p.name.split("_")[1]) for p in path.iterdir() if (p / "t3s.json").is_file())


def test_every_kth_snapshot_and_last_k_checkpoints(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    # left by an earlier launch: an interrupted save (no marker), and a stray file by a snapshot's name
    (run_dir / "checkpoints" / "iter_0").mkdir(parents=True)
    (run_dir / "snapshots").mkdir()
    (run_dir / "snapshots" / "step_2").write_text("not a checkpoint")
    # synchronous saves; the last step (7) is off the keep-every-2 grid: the final weights, RRT's theta_f,
    # are kept (retention once ran before the new snapshot counted as the newest, and deleted it)
    train(run_dir, tiny_data, "train.steps=7", "train.global_batch_size=2", "checkpoint.snapshot_interval=1",
          "checkpoint.snapshot_keep_every=2", "checkpoint.save_interval=1", "checkpoint.keep_last=2")
    assert kept(run_dir / "snapshots") == [0, 2, 4, 6, 7]
    assert kept(run_dir / "checkpoints") == [6, 7]
    # nothing half-written is left behind, nor the interrupted save older than the newest checkpoint
    assert sorted(p.name for p in (run_dir / "snapshots").iterdir()) == ["step_0", "step_2", "step_4", "step_6", "step_7"]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["iter_6", "iter_7"]


def test_snapshot_window_keeps_theta0_the_window_and_the_final_step(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "t3s_nemo.recipes.train", str(TINY), f"run_dir={run_dir}",
                        f"data.path={tiny_data}", "train.steps=5", "train.global_batch_size=2",
                        "checkpoint.snapshot_interval=1", "checkpoint.snapshot_window=[2,3]",
                        "checkpoint.async_save=true", "train.tensorboard=false"],
                       env=env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert kept(run_dir / "snapshots") == [0, 2, 3, 5]
    assert "snapshots: 6 of" in p.stderr  # the disk estimate


def test_the_disk_estimate_counts_what_retention_keeps():
    from t3s_nemo.checkpoint.manager import keeps_snapshot, snapshot_plan
    from t3s_nemo.config import CheckpointConfig

    def plan(steps, **kw):
        written, kept = snapshot_plan(CheckpointConfig(**kw), steps)
        return len(written), kept

    assert plan(50, snapshot_interval=1, snapshot_keep_every=4) == (51, [0, *range(4, 49, 4), 50])
    assert plan(100, snapshot_interval=10, snapshot_keep_every=3) == (11, [0, 30, 60, 90, 100])
    assert plan(75, snapshot_interval=10) == (9, [0, 10, 20, 30, 40, 50, 60, 70, 75])  # the off-grid final step
    assert plan(5, snapshot_interval=1, snapshot_window=[2, 3]) == (6, [0, 2, 3, 5])
    assert plan(4, snapshot_interval=2, snapshot_step0=False) == (2, [2, 4])
    c = CheckpointConfig(snapshot_interval=2, snapshot_keep_every=2, snapshot_window=[4, 8])
    assert [s for s in range(12) if keeps_snapshot(c, s)] == [0, 4, 8]


def test_a_second_full_save_at_the_same_step_is_skipped():
    """A preemption right after a periodic save asked for iter_N again; rewriting starts by deleting the
    complete one (with keep_last=1, the only one)."""
    from t3s_nemo.checkpoint.manager import CheckpointManager

    m = object.__new__(CheckpointManager)  # the guard comes before anything that needs a model
    m._last_full = 20
    m.save_full(None, None, None, 20)
    assert m._last_full == 20
    with pytest.raises(TypeError):  # another step is saved: it gets as far as the (missing) model
        m.save_full(None, None, None, 21)


def test_a_converted_hugging_face_init_is_redone_for_another_model_init(tmp_path):
    """run_dir/init_from_hf holds one model.init's conversion: a relaunch with another model.init (after a
    first launch died before its first checkpoint, so no resume guard applies) converts again."""
    import json

    from t3s_nemo.checkpoint.manager import needs_conversion

    converted, a, b = tmp_path / "run" / "init_from_hf", tmp_path / "A", tmp_path / "B"
    a.mkdir()
    b.mkdir()
    assert needs_conversion(converted, a)
    converted.mkdir(parents=True)
    (converted / "t3s.json").write_text(json.dumps({"kind": "weights", "source": str(a)}))
    assert not needs_conversion(converted, a) and not needs_conversion(converted, tmp_path / "x" / ".." / "A")
    assert needs_conversion(converted, b)


def test_interrupted_saves_are_removed_only_below_the_save_that_completed(tmp_path):
    """After a resume the previous launch's later snapshots are still on disk: saves of steps between the
    one just completed and those may be in flight (unmarked) and must survive."""
    import json

    from t3s_nemo.checkpoint.manager import _remove_interrupted, step_dirs

    snaps = tmp_path / "snapshots"
    for step in range(58):
        (snaps / f"step_{step}").mkdir(parents=True)
        if step not in (49, 52, 53):  # 49: interrupted long ago; 52, 53: this launch's saves, in flight
            (snaps / f"step_{step}" / "t3s.json").write_text(json.dumps({"step": step}))
    _remove_interrupted(snaps, saved=51)
    present = [s for s, _ in step_dirs(snaps, complete_only=False)]
    assert 49 not in present and 52 in present and 53 in present and present[-1] == 57
