"""Snapshot and checkpoint retention, and the disk estimate printed at start."""

import subprocess
import sys

from procs import REPO, TINY, env, train


def kept(path):
    return sorted(int(p.name.split("_")[1]) for p in path.iterdir() if (p / "t3s.json").is_file())


def test_every_kth_snapshot_and_last_k_checkpoints(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    train(run_dir, tiny_data, "train.steps=6", "train.global_batch_size=2", "checkpoint.snapshot_interval=1",
          "checkpoint.snapshot_keep_every=2", "checkpoint.save_interval=1", "checkpoint.keep_last=2")
    assert kept(run_dir / "snapshots") == [0, 2, 4, 6]
    assert kept(run_dir / "checkpoints") == [5, 6]
    # nothing half-written is left behind
    assert sorted(p.name for p in (run_dir / "snapshots").iterdir()) == ["step_0", "step_2", "step_4", "step_6"]


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
