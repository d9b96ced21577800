"""slurm/profile.sbatch RUN on a real single-node Slurm: the profile runs in the run's own TP layout (a
32B student does not fit one GPU at tp=1), adds the delta channels, and gives the log p that `t3s profile
RUN` gives in one process (where the tp=2 layout falls back to tp=1, with a note)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
SLURM_DIR = REPO / "slurm"
sys.path.insert(0, str(REPO / "tests" / "distributed"))
import procs  # noqa: E402  (the tiny trajectory run comes from the real engine, outside Slurm)


def test_profile_job_runs_in_the_runs_layout_and_adds_the_channels(slurm_cluster, packed_copy, tmp_path):
    from t3s_nemo.data.packed import PackedDataset

    cluster = slurm_cluster
    if cluster.cpus < 2:
        pytest.skip(f"the test node has {cluster.cpus} CPU; the job runs 2 tasks")
    data = packed_copy
    run = tmp_path / "run"
    procs.train(run, data, "train.steps=2", "train.global_batch_size=2", "checkpoint.snapshot_interval=1",
                "parallel.tp=2", nproc=2)
    (run / "bottleneck.json").write_text(json.dumps({"bottleneck_step": 1,
                                                     "bottleneck_dir": str(run / "snapshots" / "step_1")}))

    log = tmp_path / "profile.out"
    job = cluster.sbatch("--nodes=1", "--ntasks=2", "--job-name=t3s-profile", f"--output={log}",
                         f"--chdir={REPO}", str(SLURM_DIR / "profile.sbatch"), str(run))
    info = cluster.wait(job, log)
    why = cluster.diagnostics(job, log)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", why
    text = log.read_text()
    assert "layout parallel.tp=2 parallel.pp=1" in text, why
    assert "tp=2 pp=1 dp=1" in text, why  # the recipe's banner: both tasks hold one model
    ds = PackedDataset(data)
    assert {"logp0", "logpb", "delta"} <= set(ds.channels), why
    assert ds.channels["delta"]["selector_bottleneck"] == str(run / "snapshots" / "step_1")
    on_slurm = dict(np.load(run / "profile" / "logp_b.npz"))

    # one process cannot hold tp=2: `t3s profile RUN` says so and profiles at tp=1, to the same numbers
    p = procs.run([*procs.t3s(), "profile", str(run)])
    said = p.stdout + p.stderr  # the console writes to stderr
    assert "profiling at tp=1 pp=1" in said and "tp=1 pp=1 dp=1" in said, said
    alone = np.load(run / "profile" / "logp_b.npz")
    assert sorted(alone.files) == sorted(on_slurm) and len(on_slurm) >= 5
    assert max(float(np.abs(alone[k] - on_slurm[k]).max()) for k in alone.files) < 1e-4
