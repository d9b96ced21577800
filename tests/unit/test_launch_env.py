"""Starting the process group from torchrun's or srun's environment."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
START = "from t3s_nemo.console import exit_on_user_error\nfrom t3s_nemo.training.distributed import init_distributed\n" \
        "exit_on_user_error(init_distributed)"


def _start(**env):
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT") and not k.startswith("SLURM_")}
    return subprocess.run([sys.executable, "-c", START], env={**base, **env}, capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def test_srun_tasks_without_a_rendezvous_address_are_one_clear_error():
    # rank 0 of 2 srun tasks would otherwise wait forever for a peer on 127.0.0.1
    p = _start(SLURM_PROCID="0", SLURM_NTASKS="2", SLURM_LOCALID="0")
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "2 processes but no MASTER_ADDR/MASTER_PORT" in p.stderr


def test_one_process_needs_no_rendezvous_address():
    assert _start().returncode == 0
