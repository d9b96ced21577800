"""slurm/bottleneck.sbatch as a job array on a real single-node Slurm: each task samples its share of the
snapshots (`--shard I/K`), and a job after the array picks theta_b from the saved results without
sampling anything again."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
SLURM_DIR = REPO / "slurm"
sys.path.insert(0, str(REPO / "tests" / "distributed"))
import procs  # noqa: E402  (the tiny trajectory run comes from the real CLI, outside Slurm)

GEN = ("generation.backend=transformers", "generation.n=1", "generation.max_new_tokens=8",
       "bottleneck.num_prompts=2")


def test_bottleneck_job_array_shards_snapshots_then_selects(slurm_cluster, tmp_path):
    cluster = slurm_cluster
    run = tmp_path / "traj run"
    procs.run([*procs.t3s(), "sft", str(procs.TINY), f"run_dir={run}", "train.steps=2", "train.global_batch_size=2",
               "checkpoint.snapshot_interval=1", "checkpoint.async_save=false", "train.tensorboard=false"])
    steps = sorted(int(p.name.split("_")[1]) for p in (run / "snapshots").iterdir() if p.name.startswith("step_"))
    assert steps == [0, 1, 2]

    logs = tmp_path / "logs"
    logs.mkdir()
    array = cluster.sbatch("--array=0-1", "--ntasks=1", "--job-name=t3s-bn-sample",
                           f"--output={logs}/%x-%A_%a.out", f"--chdir={REPO}",
                           str(SLURM_DIR / "bottleneck.sbatch"), str(run), *GEN, "--force")
    tasks = cluster.wait_array(array, logs / f"t3s-bn-sample-{array}_0.out")
    why = "\n".join(cluster.diagnostics(array, p) for p in sorted(logs.glob("*.out")))
    assert len(tasks) == 2 and all(t["JobState"] == "COMPLETED" for t in tasks), why

    # task I of 2 sampled every 2nd snapshot from the I-th, and nothing picked theta_b yet
    for i, want in ((0, [0, 2]), (1, [1])):
        text = (logs / f"t3s-bn-sample-{array}_{i}.out").read_text()
        assert f"--shard {i}/2" in text, why
        assert [int(s) for s in re.findall(r"step (\d+): train accuracy", text)] == want, why
    results = {s: run / "bottleneck" / f"step_{s}.json" for s in steps}
    assert all(p.is_file() for p in results.values()), why
    assert not (run / "bottleneck.json").exists(), "a shard must not pick theta_b"
    stamps = {s: p.stat().st_mtime_ns for s, p in results.items()}

    select_log = logs / "select.out"
    job = cluster.sbatch("--ntasks=1", "--job-name=t3s-bn-select", f"--dependency=afterok:{array}",
                         f"--output={select_log}", f"--chdir={REPO}", str(SLURM_DIR / "bottleneck.sbatch"),
                         str(run), *GEN, "--force")
    info = cluster.wait(job, select_log)
    why = cluster.diagnostics(job, select_log)
    assert info["JobState"] == "COMPLETED", why
    assert not re.search(r"step \d+: train accuracy", select_log.read_text()), "the select job sampled again\n" + why
    assert {s: p.stat().st_mtime_ns for s, p in results.items()} == stamps
    summary = json.loads((run / "bottleneck.json").read_text())
    assert [e["step"] for e in summary["snapshots"]] == steps
    saved = {s: json.loads(p.read_text())["accuracy"] for s, p in results.items()}
    assert [e["accuracy"] for e in summary["snapshots"]] == [saved[s] for s in steps]
    assert summary["bottleneck_step"] in (1, 2)
