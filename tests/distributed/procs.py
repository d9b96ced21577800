"""Helpers for tests that start real processes (torchrun + gloo) running the real megatron-core engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "t3s_nemo" / "assets" / "demo"
TINY = REPO / "configs" / "tiny" / "sft.yaml"


def t3s() -> list[str]:
    """The installed `t3s` command of this interpreter's environment (CI does not activate the venv)."""
    script = Path(sys.executable).parent / "t3s"
    return [str(script)] if script.exists() else [sys.executable, "-m", "t3s_nemo.cli"]


def env() -> dict:
    e = dict(os.environ, T3S_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a command; fail the test with its output if it fails."""
    p = subprocess.run(args, capture_output=True, text=True, env=env(), timeout=timeout, cwd=REPO)
    if p.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {p.returncode}\n{p.stdout[-4000:]}\n{p.stderr[-8000:]}")
    return p


def run_script(name: str, *args) -> dict:
    """Run tests/distributed/scripts/NAME with args; returns the JSON it prints after 'RESULT '."""
    p = run([sys.executable, str(REPO / "tests" / "distributed" / "scripts" / name), *map(str, args)])
    if "RESULT " not in p.stdout:
        pytest.fail(f"{name} printed no RESULT line\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
    return json.loads(p.stdout.rsplit("RESULT ", 1)[1].splitlines()[0])


def train(run_dir: Path, data: Path, *overrides: str, nproc: int = 1, mode: str = "sft",
          printed: Optional[list[str]] = None) -> list[dict]:
    """Run the train recipe (under torchrun when nproc > 1); returns trajectory.jsonl records (and appends
    what it printed to `printed`)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] if nproc > 1 else [sys.executable]
    p = run([*launcher, "-m", "t3s_nemo.recipes.train", "--mode", mode, str(TINY), f"run_dir={run_dir}",
             f"data.path={data}", "train.tensorboard=false", "checkpoint.async_save=false", *overrides])
    if printed is not None:
        printed.append(p.stdout + p.stderr)
    return [json.loads(line) for line in (run_dir / "trajectory.jsonl").read_text().splitlines()]


def t3s_here(*args) -> str:
    """Run a `t3s` command in this process (typer's CliRunner over the real app): for commands that need no
    megatron-core (mask, export), which cost a Python start-up each as a subprocess. The entry point
    itself keeps subprocess tests. Returns what it printed; fails the test on a non-zero exit."""
    from typer.testing import CliRunner

    from t3s_nemo.cli import app

    r = CliRunner().invoke(app, [str(a) for a in args])
    if r.exit_code != 0:
        pytest.fail(f"t3s {' '.join(map(str, args))} exited {r.exit_code}\n{r.output[-4000:]}\n{r.exception!r}")
    return r.output
