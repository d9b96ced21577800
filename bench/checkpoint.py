"""Checkpoint speed: save and load time and GB/s of a weights snapshot, and the async vs sync stall.

    python bench/checkpoint.py [--steps 12] [--hidden 256] [--layers 4] [--out bench/results/checkpoint.json]

Save/load: dist_checkpointing save and load of the model in one process, repeated, median.

Runs the real train recipe three times on the bundled demo data (no snapshots, sync snapshots,
async snapshots every step) and reads trajectory.jsonl, two ways:
- blocking = median `checkpoint_seconds` (the time the loop itself waited on the save that step) /
  median step without snapshots: what a save costs the loop directly, little affected by other load;
- stall = (median step with snapshots - median step without) / median step without: that plus the
  slow-down of the next steps while the writer runs (on a 2-core CPU the async writer competes with
  training for the same cores; on a GPU node it runs on otherwise idle host cores).
Target for async: <= 5%.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402

from t3s_nemo.io import atomic_write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def run(run_dir: Path, steps: int, hidden: int, layers: int, snapshots: bool, async_save: bool) -> list[dict]:
    args = [sys.executable, "-m", "t3s_nemo.recipes.train", str(REPO / "configs" / "tiny" / "sft.yaml"),
            f"run_dir={run_dir}", f"train.steps={steps}", f"model.hidden_size={hidden}",
            f"model.ffn_hidden_size={hidden * 3}", f"model.num_layers={layers}", "train.tensorboard=false",
            f"checkpoint.snapshot_interval={1 if snapshots else 0}", "checkpoint.snapshot_step0=false",
            f"checkpoint.async_save={str(async_save).lower()}", "resume=never"]
    env = dict(os.environ, T3S_NO_PROGRESS="1")
    subprocess.run(args, check=True, env=env, cwd=REPO, capture_output=True)
    recs = [json.loads(x) for x in (run_dir / "trajectory.jsonl").read_text().splitlines()]
    return recs[2:]  # the first steps carry one-off start-up costs


def save_load(hidden: int, layers: int, repeats: int = 3) -> dict:
    """Median sync save and load seconds of this model's weights, in a child process (world size 1)."""
    code = f"""
import json, statistics, tempfile, time
from pathlib import Path
from t3s_nemo.config import Config
from t3s_nemo.checkpoint import weights as W
from t3s_nemo.training.distributed import init_distributed, init_model_parallel
from t3s_nemo.training.setup import build_model
init_distributed(); cfg = Config(); cfg.model.hidden_size = {hidden}; cfg.model.ffn_hidden_size = {3 * hidden}
cfg.model.num_layers = {layers}; init_model_parallel(cfg.parallel)
b = build_model(cfg, 512, 1024)
nbytes = sum(p.numel() * p.element_size() for c in b.chunks for p in c.parameters())
save, load = [], []
for i in range({repeats}):
    d = Path(tempfile.mkdtemp()) / "ckpt"
    t = time.perf_counter(); W.save_weights(b.chunks, d, {{"step": i}}); save.append(time.perf_counter() - t)
    t = time.perf_counter(); W.load_weights(b.chunks, d); load.append(time.perf_counter() - t)
print("RESULT " + json.dumps({{"bytes": nbytes, "save_s": statistics.median(save), "load_s": statistics.median(load)}}))
"""
    p = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=REPO,
                       env=dict(os.environ, T3S_NO_PROGRESS="1"))
    r = json.loads(p.stdout.split("RESULT ", 1)[1])
    r["save_GB_per_s"] = r["bytes"] / r["save_s"] / 1e9
    r["load_GB_per_s"] = r["bytes"] / r["load_s"] / 1e9
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "checkpoint.json"))
    a = ap.parse_args()
    if a.steps < 3:
        ap.error("--steps: at least 3 (the first 2 steps carry start-up costs and are not measured)")
    tmp = Path(tempfile.mkdtemp())
    data = tmp / "none"
    times = {
        "none": run(data, a.steps, a.hidden, a.layers, False, False),
        "sync": run(tmp / "sync", a.steps, a.hidden, a.layers, True, False),
        "async": run(tmp / "async", a.steps, a.hidden, a.layers, True, True),
    }
    med = {k: statistics.median(r["seconds"] for r in v) for k, v in times.items()}
    waited = {k: statistics.median(r["checkpoint_seconds"] for r in v) for k, v in times.items()}
    result = {
        "benchmark": "checkpoint",
        "save_load": save_load(a.hidden, a.layers),
        "model": {"hidden": a.hidden, "layers": a.layers, "params_note": "tiny preset with overrides"},
        "median_step_s": med,
        "median_checkpoint_wait_s": waited,
        "sync_blocking": waited["sync"] / med["none"],
        "async_blocking": waited["async"] / med["none"],
        "sync_stall": med["sync"] / med["none"] - 1,
        "async_stall": med["async"] / med["none"] - 1,
        "async_over_sync_step": med["async"] / med["sync"],
        "target_async_stall": 0.05,
        "steps_measured": len(times["none"]),
        "machine": machine_info(),
    }
    atomic_write_json(a.out, result)  # the result file appears whole or not at all
    print(json.dumps({k: result[k] for k in ("save_load", "median_step_s", "median_checkpoint_wait_s", "sync_blocking",
                                             "async_blocking", "sync_stall", "async_stall")}, indent=2))


if __name__ == "__main__":
    main()
