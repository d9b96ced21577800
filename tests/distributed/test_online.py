"""Online T3S (`t3s pipeline ... pipeline.online=true`) on the tiny model, CPU.

One uninterrupted run with a forced detection, and one under two processes (DP=2, torchrun + gloo)
killed with SIGKILL mid-profile then rerun: both must end in the same state (same theta_b, same mask,
the same masked training losses to float tolerance). A third run with online.restart=current trains the
masked phase from the weights at detection instead of theta_0. (Resuming a killed run bit for bit is
tests/distributed/test_resume.py's subject; one run here covers both the kill and DP=2, as each online
run costs several process starts.)
"""

import json
import os
import shutil
import signal
import subprocess

import numpy as np

from procs import REPO, TINY, env, run, t3s


def online_args(root, data, *extra):
    return [*t3s(), "pipeline", str(TINY), f"run_dir={root}", f"data.path={data}", "pipeline.online=true",
            "train.steps=2", "pipeline.sft_steps=4", "train.global_batch_size=2", "online.eval_every=2",
            "online.force_step=2", "online.num_prompts=2", "generation.n=1", "generation.max_new_tokens=8",
            "train.tensorboard=false", "checkpoint.async_save=false", *extra]


def records(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_online_switches_at_the_forced_step_trains_masked_and_resumes_after_kill(tiny_data, tmp_path):
    from t3s_nemo.data.packed import PackedDataset

    data_a, data_b = tmp_path / "data_a", tmp_path / "data_b"  # the pipeline adds channels to its dataset
    shutil.copytree(tiny_data, data_a)
    shutil.copytree(tiny_data, data_b)

    # ---- uninterrupted -------------------------------------------------------------------------------
    a = tmp_path / "a"
    run(online_args(a, data_a))
    state = json.loads((a / "online.json").read_text())
    assert state["phase"] == "done"
    det = state["detection"]
    assert (det["step"], det["at_step"], det["reason"]) == (2, 2, "forced")
    assert det["theta_b"] == str(a / "sft" / "snapshots" / "step_2")
    assert [e["step"] for e in state["evaluations"]] == [0, 2]  # every eval_every steps, theta_0 included
    # the SFT phase stopped at the detection (budget 4): chunked by train.stop_at, not trained further
    assert [r["step"] for r in records(a / "sft" / "trajectory.jsonl")] == [1, 2]
    assert not (a / "sft" / "checkpoints" / "iter_4").exists()
    ds = PackedDataset(data_a)
    assert ds.channels["logp0"]["selector_base"] == str(a / "sft" / "snapshots" / "step_0")
    assert ds.channels["delta"]["selector_bottleneck"] == det["theta_b"]
    assert "t3s_mask" in ds.channels and state["mask"]["channel"] == "t3s_mask"
    assert 0 < state["mask"]["masked_fraction"] < 1
    # the masked phase: from theta_0, with the mask channel, masked_fraction > 0 at every step
    masked = records(a / "t3s" / "trajectory.jsonl")
    assert [r["step"] for r in masked] == [1, 2] and all(r["masked_fraction"] > 0 for r in masked)
    assert state["masked_init"] == str(a / "sft" / "snapshots" / "step_0")
    t3s_cfg = (a / "t3s" / "config.yaml").read_text()
    assert "channel: t3s_mask" in t3s_cfg and f"init: {a / 'sft' / 'snapshots' / 'step_0'}" in t3s_cfg
    merged = records(a / "trajectory.jsonl")
    assert [(r["phase"], r["online_step"]) for r in merged] == [("sft", 1), ("sft", 2), ("masked", 3), ("masked", 4)]

    # ---- DP=2, killed mid-profile (theta_b's log p written, nothing attached), then rerun ------------------
    b = tmp_path / "b"
    dp2 = ["--nproc-per-node", "2"]
    # output to a file, in its own session: helper processes of the killed driver may keep a pipe open
    log = tmp_path / "killed.log"
    with open(log, "w") as out:
        p = subprocess.Popen([*online_args(b, data_b), *dp2], stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                             env=dict(env(), T3S_ONLINE_KILL_AT="profile:theta_b"), start_new_session=True)
        rc = p.wait(timeout=600)
    try:
        os.killpg(p.pid, signal.SIGKILL)  # what the driver left behind, as a crashed node would
    except ProcessLookupError:
        pass
    assert rc == -signal.SIGKILL, log.read_text()[-3000:]
    killed = json.loads((b / "online.json").read_text())
    assert killed["phase"] == "profile" and killed["profile_b"] is None
    assert "delta" not in PackedDataset(data_b).channels and not (b / "t3s").exists()
    second = run([*online_args(b, data_b), *dp2])
    assert "SFT steps" not in second.stderr + second.stdout  # the SFT phase is not run again
    resumed = json.loads((b / "online.json").read_text())
    assert resumed["phase"] == "done" and resumed["detection"]["step"] == det["step"]
    assert [e["step"] for e in resumed["evaluations"]] == [e["step"] for e in state["evaluations"]]
    assert resumed["mask"]["masked_fraction"] == state["mask"]["masked_fraction"]
    ds_b = PackedDataset(data_b)
    for i in range(ds.num_examples):
        np.testing.assert_array_equal(ds.read_example(i, "t3s_mask"), ds_b.read_example(i, "t3s_mask"))
    for phase, ref in (("sft", records(a / "sft" / "trajectory.jsonl")), ("t3s", masked)):
        got = records(b / phase / "trajectory.jsonl")
        assert [r["step"] for r in got] == [r["step"] for r in ref]
        np.testing.assert_allclose([r["loss"] for r in got], [r["loss"] for r in ref], rtol=1e-5)

    # ---- a rerun with other online settings is refused, naming the key ----------------------------------
    p = subprocess.run([*online_args(b, data_b, "online.patience=5"), *dp2], capture_output=True, text=True, cwd=REPO,
                       timeout=300, env=env())
    assert p.returncode != 0 and "online.patience=2, now 5" in p.stderr + p.stdout
    assert "Traceback" not in p.stderr

    # ---- online.restart=current: the masked phase starts from the weights at detection --------------------
    data_c = tmp_path / "data_c"
    shutil.copytree(tiny_data, data_c)
    c = tmp_path / "c"
    run(online_args(c, data_c, "online.restart=current"))
    current = json.loads((c / "online.json").read_text())
    assert current["detection"]["current"] == str(c / "sft" / "snapshots" / "step_2")  # detected at step 2
    assert current["masked_init"] == current["detection"]["current"]
    assert f"init: {current['detection']['current']}" in (c / "t3s" / "config.yaml").read_text()
    # same data, mask and seeds as run a, other starting weights: another masked loss from the first step
    from_current = records(c / "t3s" / "trajectory.jsonl")
    assert [r["step"] for r in from_current] == [1, 2]
    assert abs(from_current[0]["loss"] - masked[0]["loss"]) > 1e-4
