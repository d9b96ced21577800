"""Profiling (forward-only log p) vs training tokens/s on the same model, data and machine.

    python bench/profile_vs_train.py [--hidden 256] [--layers 4] [--steps 10] [--out bench/results/profile_vs_train.json]

Trains a few steps with the real recipe (snapshot at step 0 and at the end), then profiles the whole
dataset at those two snapshots with recipes/profile.py; compares the median training tokens/s with the
profiler's tokens/s per checkpoint. Target: profile >= 2.5x train.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402

from t3s_nemo.io import atomic_write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "profile_vs_train.json"))
    a = ap.parse_args()
    if a.steps < 3:
        ap.error("--steps: at least 3 (the first 2 steps carry start-up costs and are not measured)")
    env = dict(os.environ, T3S_NO_PROGRESS="1")
    run = Path(tempfile.mkdtemp()) / "run"
    subprocess.run([sys.executable, "-m", "t3s_nemo.recipes.train", str(REPO / "configs/tiny/sft.yaml"),
                    f"run_dir={run}", f"train.steps={a.steps}", f"model.hidden_size={a.hidden}",
                    f"model.ffn_hidden_size={3 * a.hidden}", f"model.num_layers={a.layers}",
                    f"checkpoint.snapshot_interval={a.steps}", "train.tensorboard=false"],
                   check=True, env=env, cwd=REPO, capture_output=True)
    recs = [json.loads(x) for x in (run / "trajectory.jsonl").read_text().splitlines()]
    train_tps = statistics.median(r["tokens_per_s"] for r in recs[2:])
    p = subprocess.run([sys.executable, "-m", "t3s_nemo.recipes.profile", "--data", str(run / "data"),
                        "--checkpoint", str(run / "snapshots/step_0"), "--checkpoint-b",
                        str(run / f"snapshots/step_{a.steps}"), "--out", str(run / "profile")],
                       check=True, env=env, cwd=REPO, capture_output=True, text=True)
    m = re.search(r"([\d,]+) tokens/s", p.stderr)
    profile_tps = float(m.group(1).replace(",", ""))
    result = {
        "benchmark": "profile_vs_train",
        "model": {"hidden": a.hidden, "layers": a.layers},
        "train_tokens_per_s": train_tps,
        "profile_tokens_per_s": profile_tps,
        "profile_over_train": profile_tps / train_tps,
        "target": 2.5,
        "machine": machine_info(),
    }
    atomic_write_json(Path(a.out), result)
    print(json.dumps({k: result[k] for k in ("train_tokens_per_s", "profile_tokens_per_s", "profile_over_train")}, indent=2))


if __name__ == "__main__":
    main()
