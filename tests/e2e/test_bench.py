"""The benchmark scripts run end to end at toy sizes and write their result, with the machine, as JSON.

The numbers themselves are measured on purpose (bench/results), never asserted here; this keeps the
scripts from rotting between measurements (bench/train_step.py once imported a name that had moved)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

CASES = {
    "train_step": (["--steps", "1", "--seq-length", "256"], "masked_over_unmasked"),
    "profile_vs_train": (["--steps", "3", "--hidden", "64", "--layers", "1"], "profile_over_train"),
    "checkpoint": (["--steps", "3", "--hidden", "64", "--layers", "1"], "async_stall"),
    "pack": (["--tokens", "20000", "--seq-length", "256"], "end_to_end"),
    "attention": (["--steps", "1", "--seq-lengths", "256"], "by_seq_length"),
    "dllm_sample": (["--prompts", "2", "--gen-length", "8", "--block-length", "4", "--steps-per-block", "2"],
                    "batched_over_alone"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_writes_its_result(name, tmp_path):
    args, key = CASES[name]
    out = tmp_path / f"{name}.json"
    p = subprocess.run([sys.executable, str(REPO / "bench" / f"{name}.py"), *args, "--out", str(out)],
                       capture_output=True, text=True, cwd=tmp_path, timeout=600,
                       env={"PATH": "/usr/bin:/bin", "T3S_NO_PROGRESS": "1", "HOME": str(tmp_path)})
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result[key] and result["machine"]["python"]


def test_too_few_steps_is_one_clear_error(tmp_path):
    p = subprocess.run([sys.executable, str(REPO / "bench" / "checkpoint.py"), "--steps", "2", "--out", str(tmp_path / "c.json")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "--steps: at least 3" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "c.json").exists()
