"""Crash-safe checkpoints: kill -9 mid-run, resume=auto, and the losses equal an uninterrupted run's."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from procs import REPO, TINY, env, train

ARGS = ("train.steps=8", "train.global_batch_size=2", "train.warmup_steps=1", "checkpoint.save_interval=2",
        "checkpoint.keep_last=2", "train.log_interval=1")


def test_kill_9_then_resume_matches_uninterrupted_run(tiny_data, tmp_path):
    reference = train(tmp_path / "ref", tiny_data, *ARGS)

    run_dir = tmp_path / "crash"
    cmd = [sys.executable, "-m", "t3s_nemo.recipes.train", str(TINY), f"run_dir={run_dir}", f"data.path={tiny_data}",
           "train.tensorboard=false", "checkpoint.async_save=false", *ARGS]
    proc = subprocess.Popen(cmd, env=env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    log = run_dir / "trajectory.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:
        if log.exists() and len(log.read_text().splitlines()) >= 5:
            break
        if proc.poll() is not None:
            pytest.fail("training exited before it could be killed")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    crashed_at = len(log.read_text().splitlines())
    assert crashed_at < 8, "the run finished before the kill; nothing was tested"

    resumed = train(run_dir, tiny_data, *ARGS)  # resume=auto is the default
    assert [r["step"] for r in resumed] == list(range(1, 9))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in reference]
    assert [r["grad_norm"] for r in resumed] == [r["grad_norm"] for r in reference]
    kept = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert kept == ["iter_6", "iter_8"]  # keep_last=2, every kept one complete
    assert all((run_dir / "checkpoints" / k / "t3s.json").is_file() for k in kept)


def test_interrupted_save_is_ignored_and_reported(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    train(run_dir, tiny_data, "train.steps=4", "checkpoint.save_interval=2", "checkpoint.keep_last=5")
    # simulate a save cut off mid-write: step 4's checkpoint without its completion marker
    (run_dir / "checkpoints" / "iter_4" / "t3s.json").unlink()
    p = subprocess.run([sys.executable, "-m", "t3s_nemo.recipes.train", str(TINY), f"run_dir={run_dir}",
                        f"data.path={tiny_data}", "train.steps=4", "checkpoint.save_interval=2",
                        "checkpoint.async_save=false", "train.tensorboard=false"],
                       env=env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "ignoring interrupted checkpoint save(s): iter_4" in p.stderr
    assert "resumed from" in p.stderr and "iter_2" in p.stderr
    records = [json.loads(x) for x in (run_dir / "trajectory.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]


def test_sigusr1_saves_a_checkpoint_and_exits_75_then_resumes(tiny_data, tmp_path):
    args = ("train.steps=40", "train.global_batch_size=2", "checkpoint.save_interval=0")
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "t3s_nemo.recipes.train", str(TINY), f"run_dir={run_dir}", f"data.path={tiny_data}",
           "train.tensorboard=false", "checkpoint.async_save=false", *args]
    proc = subprocess.Popen(cmd, env=env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = run_dir / "trajectory.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err[-2000:]
    assert "preempted: full checkpoint at step" in err
    saved = [p.name for p in (run_dir / "checkpoints").iterdir()]
    assert len(saved) == 1 and (run_dir / "checkpoints" / saved[0] / "t3s.json").is_file()
    step = int(saved[0].split("_")[1])
    assert 3 <= step < 40
    resumed = train(run_dir, tiny_data, *args)
    assert [r["step"] for r in resumed] == list(range(1, 41))


def test_full_checkpoint_resumes_at_another_layout(tiny_data, tmp_path):
    # 2 steps at TP=2, then on at PP=2, then on in one process: the losses follow an uninterrupted
    # single-process run (to float tolerance: layouts reduce in different orders). A constant LR: each
    # segment sets another train.steps, and a resumed run keeps the checkpoint's LR schedule.
    args = ("train.global_batch_size=2", "checkpoint.save_interval=0", "train.lr_decay=constant",
            "train.warmup_steps=0")
    reference = train(tmp_path / "ref", tiny_data, "train.steps=6", *args)
    run_dir = tmp_path / "run"
    train(run_dir, tiny_data, "train.steps=2", "parallel.tp=2", *args, nproc=2)
    train(run_dir, tiny_data, "train.steps=4", "parallel.pp=2", *args, nproc=2)
    resumed = train(run_dir, tiny_data, "train.steps=6", *args)
    assert [r["step"] for r in resumed] == list(range(1, 7))
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in reference], abs=1e-5)
    assert [r["grad_norm"] for r in resumed] == pytest.approx([r["grad_norm"] for r in reference], rel=1e-4)
