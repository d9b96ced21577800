"""`t3s sft configs/tiny/sft.yaml` from the command line, as a new user runs it."""

import json
import subprocess

import pytest
from procs import REPO, env, t3s

from t3s_nemo.devices import te_available


def test_t3s_sft_tiny_config_runs_and_loss_decreases(tmp_path):
    run_dir = tmp_path / "run"
    # a relative run_dir, as a user types it
    p = subprocess.run([*t3s(), "sft", str(REPO / "configs/tiny/sft.yaml"), "run_dir=run", "train.steps=12"],
                       cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    records = [json.loads(x) for x in (run_dir / "trajectory.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 13))
    first = sum(r["loss"] for r in records[:3]) / 3
    last = sum(r["loss"] for r in records[-3:]) / 3
    assert last < first - 0.5
    assert (run_dir / "config.yaml").read_text().count("preset: tiny") == 1
    assert (run_dir / "data" / "meta.json").is_file()  # packed from data.input on first use
    assert (run_dir / "checkpoints" / "iter_12" / "t3s.json").is_file()
    # the later stages find the dataset from any working directory
    from t3s_nemo.config import load_config

    assert load_config(run_dir / "config.yaml").data.path == str(run_dir / "data")
    # a refused rerun (another model shape) and a finished one (a key the trajectory does not depend on)
    # keep the config the run was made with
    saved = (run_dir / "config.yaml").read_text()
    for extra, rc, says in (("model.num_layers=3", 1, "trained with other settings (model.num_layers null -> 3)"),
                            ("train.log_interval=1", 0, "nothing to do")):
        p = subprocess.run([*t3s(), "sft", str(REPO / "configs/tiny/sft.yaml"), f"run_dir={run_dir}", "train.steps=12",
                            extra], cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=600)
        assert p.returncode == rc and says in p.stdout + p.stderr, p.stderr[-2000:]
        assert (run_dir / "config.yaml").read_text() == saved, extra


def test_t3s_train_without_a_mask_is_a_clear_error(tmp_path):
    p = subprocess.run([*t3s(), "train", "configs/tiny/sft.yaml", f"run_dir={tmp_path / 'r'}"],
                       cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 1
    assert "error: `t3s train` trains with a T3S mask" in p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "r").exists()


def test_a_config_that_does_not_fit_the_processes_is_refused_before_they_start(tmp_path):
    p = subprocess.run([*t3s(), "sft", "configs/tiny/sft.yaml", f"run_dir={tmp_path / 'r'}", "parallel.tp=3",
                        "--nproc-per-node", "2"], cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [
        "error: config keys 'parallel.tp/pp/cp': tp*pp*cp = 3 does not divide the world size 2: "
        "start 3 processes or a multiple (--nproc-per-node, or srun tasks)"]
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(te_available(), reason="with Transformer Engine, sequence parallelism is a valid config")
def test_a_user_error_under_torchrun_exits_non_zero_with_one_message(tmp_path):
    # sequence parallelism needs Transformer Engine's norms: every rank refuses the config
    p = subprocess.run([*t3s(), "sft", "configs/tiny/sft.yaml", f"run_dir={tmp_path / 'r'}", "parallel.tp=2",
                        "parallel.sequence_parallel=true", "--nproc-per-node", "2"],
                       cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, p.stderr[-3000:]
    assert "error: config key 'parallel.sequence_parallel': needs Transformer Engine layers" in p.stderr
    assert "error: t3s_nemo.recipes.train: rank" in p.stderr and "ended with exit code 1" in p.stderr
    assert "Traceback" not in p.stderr and "ChildFailedError" not in p.stderr
