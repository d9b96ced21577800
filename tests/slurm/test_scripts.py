"""The slurm/ scripts without a cluster: syntax, the shared preamble, and the pipeline submitter's job
chain (--dry-run), with arguments that must survive as they are."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SLURM_DIR = REPO / "slurm"
SCRIPTS = sorted(SLURM_DIR.glob("*.sbatch"))
PREAMBLE = re.compile(r"# ---- t3s preamble.*?# ---- end of the t3s preamble[^\n]*\n", re.S)


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
    return dict(env, T3S_NO_PROGRESS="1", **extra)


def test_scripts_parse_and_share_one_preamble():
    assert {p.name for p in SCRIPTS} >= {"train.sbatch", "profile.sbatch", "bottleneck.sbatch", "export.sbatch",
                                         "t3s.sbatch"}
    preambles = set()
    for script in [*SCRIPTS, SLURM_DIR / "submit_pipeline.sh"]:
        p = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert p.returncode == 0, f"{script.name}: {p.stderr}"
        text = script.read_text()
        assert not re.search(r"^\s*eval\b", text, re.M), f"{script.name}: no eval"
        if script.suffix == ".sbatch":
            assert text.startswith("#!/usr/bin/env bash\n#SBATCH --job-name=t3s-"), script.name
            assert "#SBATCH --requeue" in text and "#SBATCH --open-mode=append" in text, script.name
            m = PREAMBLE.search(text)
            assert m, f"{script.name}: the t3s preamble is missing"
            preambles.add(m.group(0))
    assert len(preambles) == 1, "the t3s preamble differs between the slurm/*.sbatch scripts; keep them the same"
    train = (SLURM_DIR / "train.sbatch").read_text()
    assert re.search(r"^#SBATCH --signal=USR1@\d+$", train, re.M)
    assert 't3s_all "$PY" -m t3s_nemo.recipes.train "$@"' in train
    assert 'scontrol requeue "$SLURM_JOB_ID"' in train


def test_sbatch_scripts_refuse_to_run_outside_slurm():
    p = subprocess.run(["bash", str(SLURM_DIR / "train.sbatch"), "configs/tiny/sft.yaml"], capture_output=True,
                       text=True, env=clean_env())
    assert p.returncode == 2 and "submit this script with sbatch" in p.stderr


def dry_run(tmp_path: Path, root: Path, *overrides: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SLURM_DIR / "submit_pipeline.sh"), "--dry-run", str(REPO / "configs" / "tiny" / "sft.yaml"),
         f"run_dir={root}", *overrides],
        capture_output=True, text=True, cwd=tmp_path, env=clean_env(T3S_PYTHON=sys.executable, **env))


def parse_jobs(stdout: str) -> dict:
    jobs = {}
    for line in stdout.splitlines():
        ref, _, cmd = line.partition(": ")
        argv = shlex.split(cmd)
        name = next(a.split("=", 1)[1] for a in argv if a.startswith("--job-name="))
        dep = next((a.split(":", 1)[1] for a in argv if a.startswith("--dependency=afterok:")), None)
        script = next(a for a in argv if a.startswith(str(SLURM_DIR)))
        jobs[name] = dict(ref=ref, argv=argv, dep=dep, script=Path(script).name, args=argv[argv.index(script) + 1:])
    return jobs


def test_pipeline_submitter_dry_run_chains_the_stages(tmp_path):
    root = tmp_path / "a run; $(touch pwned) 'x'"  # must arrive as one argument, never as shell text
    p = dry_run(tmp_path, root, "train.steps=5", "pipeline.sft_steps=7", "pipeline.baselines=[random]",
                "pipeline.rrt=true", T3S_TRAIN_SBATCH_ARGS="--nodes=2  --gpus-per-node=8",
                T3S_SBATCH_ARGS="--account=acct", T3S_BOTTLENECK_SBATCH_ARGS="--gpus=1")
    assert p.returncode == 0, p.stderr
    assert not root.exists() and not (tmp_path / "pwned").exists()  # a dry run writes nothing
    jobs = parse_jobs(p.stdout)
    ref = {name: j["ref"] for name, j in jobs.items()}
    assert list(jobs) == ["t3s-sft", "t3s-bottleneck-sample", "t3s-bottleneck", "t3s-profile", "t3s-mask-ar",
                          "t3s-mask-random", "t3s-t3s", "t3s-random", "t3s-export", "t3s-rrt", "t3s-report"]
    chain = {"t3s-sft": None, "t3s-bottleneck-sample": "t3s-sft", "t3s-bottleneck": "t3s-bottleneck-sample",
             "t3s-profile": "t3s-bottleneck",
             "t3s-mask-ar": "t3s-profile", "t3s-mask-random": "t3s-mask-ar", "t3s-t3s": "t3s-mask-random",
             "t3s-random": "t3s-mask-random", "t3s-export": "t3s-t3s", "t3s-rrt": "t3s-bottleneck"}
    for name, after in chain.items():
        assert jobs[name]["dep"] == (ref[after] if after else None), name
        assert "--parsable" in jobs[name]["argv"] and "--account=acct" in jobs[name]["argv"]
        log = "%x-%A_%a.out" if name == "t3s-bottleneck-sample" else "%x-%j.out"
        assert f"--output={root}/logs/{log}" in jobs[name]["argv"], name
    # the 8 snapshots (steps 0..7) are sampled by 8 array tasks with the bottleneck resources; one
    # small job (no GPU asked) picks theta_b
    sample = jobs["t3s-bottleneck-sample"]
    assert "--array=0-7" in sample["argv"] and "--gpus=1" in sample["argv"]
    assert sample["script"] == "bottleneck.sbatch" and sample["args"] == [f"{root}/sft"]
    assert "--gpus=1" not in jobs["t3s-bottleneck"]["argv"]
    sft = jobs["t3s-sft"]
    assert sft["script"] == "train.sbatch" and "--nodes=2" in sft["argv"] and "--gpus-per-node=8" in sft["argv"]
    assert sft["args"] == ["--mode", "sft", f"{root}/config.yaml", f"run_dir={root}/sft", "train.steps=7",
                           "checkpoint.snapshot_step0=true", "checkpoint.snapshot_interval=1"]
    assert jobs["t3s-bottleneck"]["script"] == "bottleneck.sbatch" and jobs["t3s-bottleneck"]["args"] == [f"{root}/sft"]
    assert jobs["t3s-profile"]["script"] == "profile.sbatch" and jobs["t3s-profile"]["args"] == [f"{root}/sft"]
    # seeded as `t3s pipeline` seeds them (train.seed): the random baseline is the same mask either way
    assert jobs["t3s-mask-ar"]["args"] == ["mask", f"{root}/sft", "--rule", "ar", "--name", "t3s_mask", "--seed", "1234"]
    assert jobs["t3s-mask-random"]["args"][-4:] == ["--name", "mask_random", "--seed", "1234"]
    assert jobs["t3s-t3s"]["args"] == [
        "--mode", "train", f"{root}/config.yaml", f"run_dir={root}/t3s", f"data.path={root}/sft/data",
        f"model.init={root}/sft/snapshots/step_0", "mask.channel=t3s_mask", "checkpoint.snapshot_step0=false",
        "checkpoint.snapshot_interval=0"]
    assert "mask.channel=mask_random" in jobs["t3s-random"]["args"]
    assert jobs["t3s-export"]["script"] == "export.sbatch"
    assert jobs["t3s-export"]["args"] == [f"{root}/t3s/checkpoints/iter_5", "--out", f"{root}/t3s-hf", "--overwrite"]
    assert jobs["t3s-rrt"]["args"] == ["rrt", f"{root}/sft", "--overwrite"]
    # the report waits for every run, the export and RRT, then `t3s pipeline` finds them done and writes
    # pipeline.json and report.md (no curves asked: one small process)
    report = jobs["t3s-report"]
    assert report["dep"] == ":".join(ref[n] for n in ("t3s-t3s", "t3s-random", "t3s-export", "t3s-rrt"))
    assert report["script"] == "t3s.sbatch" and report["args"] == ["pipeline", f"{root}/config.yaml"]
    assert "--gpus=1" not in report["argv"]


def test_pipeline_submitter_curves_snapshot_the_retraining_and_sample_with_the_bottleneck_resources(tmp_path):
    root = tmp_path / "run"
    jobs = parse_jobs(dry_run(tmp_path, root, "pipeline.curves=true", T3S_BOTTLENECK_SBATCH_ARGS="--gpus=1",
                              T3S_ONE_SBATCH_ARGS="--mem=8G").stdout)
    assert "checkpoint.snapshot_interval=1" in jobs["t3s-t3s"]["args"]  # as `t3s pipeline` has them
    assert "--gpus=1" in jobs["t3s-report"]["argv"] and "--mem=8G" not in jobs["t3s-report"]["argv"]


def test_pipeline_submitter_bottleneck_tasks(tmp_path):
    root = tmp_path / "run"
    # every 3rd of the snapshots 0..7 (0, 3, 6) -> 3 tasks by default
    jobs = parse_jobs(dry_run(tmp_path, root, "pipeline.sft_steps=7", "bottleneck.every=3").stdout)
    assert "--array=0-2" in jobs["t3s-bottleneck-sample"]["argv"]
    jobs = parse_jobs(dry_run(tmp_path, root, "pipeline.sft_steps=7", T3S_BOTTLENECK_TASKS="1").stdout)
    assert "t3s-bottleneck-sample" not in jobs
    assert jobs["t3s-bottleneck"]["dep"] == jobs["t3s-sft"]["ref"]
    assert not any(a.startswith("--array") for a in jobs["t3s-bottleneck"]["argv"])
    p = dry_run(tmp_path, root, T3S_BOTTLENECK_TASKS="two")
    assert p.returncode == 2 and "T3S_BOTTLENECK_TASKS=two: expected a positive integer" in p.stderr


def test_pipeline_submitter_reports_config_errors(tmp_path):
    p = subprocess.run(["bash", str(SLURM_DIR / "submit_pipeline.sh"), "--dry-run",
                        str(REPO / "configs" / "tiny" / "sft.yaml"), f"run_dir={tmp_path}", "train.stepz=3"],
                       capture_output=True, text=True, env=clean_env(T3S_PYTHON=sys.executable))
    assert p.returncode == 1
    assert "unknown config key 'train.stepz'" in p.stderr


def test_pipeline_submitter_points_online_mode_to_one_allocation(tmp_path):
    p = dry_run(tmp_path, tmp_path / "run", "pipeline.online=true")
    assert p.returncode == 1 and not p.stdout
    assert "pipeline.online=true --nproc-per-node N` inside one single-node allocation" in p.stderr
    assert not (tmp_path / "run").exists()


def test_pipeline_submitter_refuses_a_dllm_student_before_submitting(tmp_path):
    p = dry_run(tmp_path, tmp_path / "run", "model.objective=dllm")
    assert p.returncode == 1 and not p.stdout  # nothing submitted: the profile job would have failed hours in
    assert "config key 'model.objective': dllm; the pipeline runs the AR recipe" in p.stderr


def test_pipeline_submitter_profiles_with_the_configs_selectors(tmp_path):
    """The trajectory run's config.yaml keeps the selectors it started with: a resubmission naming others
    passes them to the profile job (a path with a space stays one argument)."""
    root = tmp_path / "run"
    jobs = parse_jobs(dry_run(tmp_path, root, "profile.selector_base=/sel/8b step0",
                              "profile.selector_bottleneck=/sel/8b/b").stdout)
    assert jobs["t3s-profile"]["args"] == [f"{root}/sft", "profile.selector_base=/sel/8b step0",
                                           "profile.selector_bottleneck=/sel/8b/b"]
    assert parse_jobs(dry_run(tmp_path, root).stdout)["t3s-profile"]["args"] == [f"{root}/sft"]
