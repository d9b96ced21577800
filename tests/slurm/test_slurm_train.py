"""slurm/train.sbatch on a real single-node Slurm: 2 tasks with gloo, the tiny config, and a preemption
(SIGUSR1 -> checkpoint -> exit 75 -> scontrol requeue -> resume=auto) whose losses equal an
uninterrupted run's."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
SLURM_DIR = REPO / "slurm"
TINY = REPO / "configs" / "tiny" / "sft.yaml"
STEPS = 16
# data.path is empty: rank 0 packs the bundled demo data into run_dir/data on first use
ARGS = (f"train.steps={STEPS}", "train.global_batch_size=2", "checkpoint.save_interval=4", "train.log_interval=1",
        "train.tensorboard=false", "checkpoint.async_save=false")


def submit_train(cluster, run_dir: Path, log: Path, name: str) -> str:
    if cluster.cpus < 2:
        pytest.skip(f"the test node has {cluster.cpus} CPU; the job runs 2 tasks")
    return cluster.sbatch("--nodes=1", "--ntasks=2", f"--job-name={name}", f"--output={log}", f"--chdir={REPO}",
                          str(SLURM_DIR / "train.sbatch"), "--mode", "sft", str(TINY), f"run_dir={run_dir}", *ARGS)


def trajectory(run_dir: Path) -> list[dict]:
    path = run_dir / "trajectory.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def reference(slurm_cluster, tmp_path_factory):
    """An uninterrupted run through the script; the space in the path checks the quoting on the way."""
    base = tmp_path_factory.mktemp("slurm_ref")
    run_dir, log = base / "reference run", base / "reference run.out"
    t0 = time.monotonic()
    job = submit_train(slurm_cluster, run_dir, log, "t3s-reference")
    info = slurm_cluster.wait(job, log)
    return job, info, run_dir, log, time.monotonic() - t0


def test_train_job_completes_with_checkpoints_and_trajectory(slurm_cluster, reference):
    job, info, run_dir, log, seconds = reference
    why = slurm_cluster.diagnostics(job, log)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", why
    text = log.read_text()
    assert "2 task(s)" in text and f"done: {STEPS} steps" in text, why
    assert "on 2 CPU process(es)" in text, why  # one rank per srun task, gloo
    assert [r["step"] for r in trajectory(run_dir)] == list(range(1, STEPS + 1)), why
    kept = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert kept == ["iter_12", "iter_16"], why  # save_interval=4, keep_last=2
    assert all((run_dir / "checkpoints" / k / "t3s.json").is_file() for k in kept), why
    assert (run_dir / "data" / "meta.json").is_file() and (run_dir / "config.yaml").is_file(), why
    print(f"reference job {job}: {seconds:.0f} s")


def test_preempted_job_requeues_and_matches_uninterrupted_run(slurm_cluster, reference, tmp_path):
    cluster = slurm_cluster
    run_dir, log = tmp_path / "preempted", tmp_path / "preempted.out"
    t0 = time.monotonic()
    job = submit_train(cluster, run_dir, log, "t3s-preempt")

    # wait until the loop runs (the recipe's signal handler is installed before the first step)
    deadline = time.monotonic() + 300
    while len(trajectory(run_dir)) < 2:
        state = cluster.job(job).get("JobState")
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            pytest.fail(f"job {job} ended ({state}) before it could be preempted\n" + cluster.diagnostics(job, log))
        if time.monotonic() > deadline:
            pytest.fail(f"job {job} logged no training step within 300 s\n" + cluster.diagnostics(job, log))
        time.sleep(0.1)
    signalled_after = len(trajectory(run_dir))
    # what Slurm does --signal=USR1@600 before the time limit; --full signals the batch shell too
    cluster.run("scancel", "--signal=USR1", "--full", job)
    info = cluster.wait(job, log)
    seconds = time.monotonic() - t0
    why = cluster.diagnostics(job, log)

    text = log.read_text()
    m = re.search(r"preempted: full checkpoint at step (\d+)", text)
    assert m, f"no preemption checkpoint in the log (signal after step {signalled_after})\n{why}"
    preempted_at = int(m.group(1))
    assert preempted_at < STEPS, f"the run finished before the signal took effect; nothing was tested\n{why}"
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", why
    assert int(info.get("Restarts", 0)) >= 1, why
    assert "exit 75" in text and f"requeueing job {job}" in text, why
    starts = re.findall(rf"t3s: job {job} \(t3s-preempt\) start .* restart (\d+):", text)
    assert starts[:2] == ["0", "1"], f"expected a first start and a restart in the log, got {starts}\n{why}"
    assert f"resumed from {run_dir}/checkpoints/iter_{preempted_at} (step {preempted_at})" in text, why

    got, want = trajectory(run_dir), trajectory(reference[2])
    assert [r["step"] for r in got] == list(range(1, STEPS + 1)), why
    assert got[-1]["loss"] == want[-1]["loss"], (
        f"final loss after preemption at step {preempted_at}: {got[-1]['loss']!r}, uninterrupted: {want[-1]['loss']!r}")
    assert [r["loss"] for r in got] == [r["loss"] for r in want]
    assert (run_dir / "checkpoints" / f"iter_{STEPS}" / "t3s.json").is_file(), why
    print(f"preempted job {job}: checkpoint at step {preempted_at}, {starts} starts, {seconds:.0f} s; "
          f"reference {reference[4]:.0f} s")
