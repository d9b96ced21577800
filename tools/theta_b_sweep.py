"""T3S against the choice of theta_b, on finished demo (or pipeline) runs.

    python tools/theta_b_sweep.py runs/demo-seeds/seed1 runs/demo-seeds/seed2 runs/demo-seeds/seed3 \
        --steps 8 16 24 32 40 --out runs/theta-b-sweep

For each run ROOT and each step B (a snapshot of ROOT/sft): a copy of the run's packed data gets
delta = log p(step B) - log p(theta_0) and the T3S mask (delta > 0 dropped); the run's own recipe
retrains from theta_0 with it (ROOT/config.yaml: steps, learning rate, seed); every snapshot of that
retraining is evaluated with the bottleneck's prompts and sampler. Resumable (every piece is skipped once
done; pieces live in OUT/<ROOT name>/theta_b_B). Writes OUT/sweep.json (per run and, over runs, mean and
standard deviation per B, with the machine) and prints the table: the trajectory's accuracy at B, the
masked fraction, and T3S's lowest and final accuracy.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/machine.py


def sweep_run(root: Path, steps: list[int], out: Path) -> dict:
    from t3s_nemo.checkpoint import weights as W
    from t3s_nemo.checkpoint.manager import step_dirs
    from t3s_nemo.cli import launch_recipe
    from t3s_nemo.config import load_config
    from t3s_nemo.console import heading, progress
    from t3s_nemo.data.packed import PackedDataset
    from t3s_nemo.io import read_json
    from t3s_nemo.trajectory.bottleneck import (evaluate_cached, generation_settings, result_key,
                                                training_prompts)
    from t3s_nemo.trajectory.generate import resolve_backend
    from t3s_nemo.trajectory.mask_build import build_mask
    from t3s_nemo.trajectory.profile import attach

    summary = read_json(root / "pipeline.json", "pipeline summary")
    cfg = load_config(root / "config.yaml")
    sft = Path(summary["runs"]["sft"])
    step0 = sft / "snapshots" / "step_0"
    data = Path(summary["data"])
    ids, prompts, answers = training_prompts(PackedDataset(data), cfg.bottleneck.num_prompts, cfg.generation.seed)
    gen = generation_settings(cfg, resolve_backend(cfg.generation.backend, cfg.model.objective))
    key = result_key(gen, ids)
    trajectory = {r["step"]: r["accuracy"] for r in
                  (json.loads(f.read_text()) for f in (sft / "bottleneck").glob("step_*.json"))}
    curves = read_json(root / "curves.json", "accuracy curves") if (root / "curves.json").is_file() else None
    rows = []
    for b in steps:
        snap = sft / "snapshots" / f"step_{b}"
        if not W.is_complete(snap):
            raise SystemExit(f"error: {snap}: no complete snapshot at step {b}")
        d = out / root.name / f"theta_b_{b}"
        heading(f"{root.name}: theta_b = step {b}")
        if not (d / "data").is_dir():
            tmp = d / ".data.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(data, tmp)
            tmp.rename(d / "data")
        ds = PackedDataset(d / "data")
        if ds.channels.get("delta", {}).get("selector_bottleneck") != str(snap):
            launch_recipe("t3s_nemo.recipes.profile", ["--data", str(d / "data"), "--checkpoint", str(step0),
                                                      "--checkpoint-b", str(snap), "--out", str(d / "profile"),
                                                      "--micro-batch-size", str(cfg.profile.micro_batch_size)], 1)
            attach(PackedDataset(d / "data"), d / "profile", step0, snap)
        report = build_mask(PackedDataset(d / "data"), "ar", "t3s_mask", seed=cfg.train.seed)
        run = d / "t3s"
        if not W.is_complete(run / "checkpoints" / f"iter_{cfg.train.steps}"):
            launch_recipe("t3s_nemo.recipes.train", [
                "--mode", "train", str(root / "config.yaml"), f"run_dir={run}", f"data.path={d / 'data'}",
                f"model.init={step0}", "mask.channel=t3s_mask", "checkpoint.snapshot_step0=false",
                f"checkpoint.snapshot_interval={cfg.checkpoint.snapshot_interval}"], 1)
        snaps = step_dirs(run / "snapshots")
        with progress() as bar:
            results = evaluate_cached(snaps, run / "bottleneck", prompts, answers, gen, key,
                                      PackedDataset(d / "data").tokenizer_dir, bar, label=f"theta_b {b}: step")
        acc = [r["accuracy"] for r in results]
        rows.append({"theta_b": b, "trajectory_accuracy": trajectory.get(b), "masked_fraction": report["masked_fraction"],
                     "steps": [s for s, _ in snaps], "accuracy": acc, "min_accuracy": min(acc), "final_accuracy": acc[-1]})
    return {"root": str(root), "seed": cfg.train.seed, "bottleneck_step": summary["bottleneck_step"],
            "prompts": len(prompts),
            "generation": {k: gen[k] for k in ("backend", "n", "temperature", "max_new_tokens", "seed")},
            "pipeline_t3s": next((r for r in curves["table"] if r["method"] == "t3s"), None) if curves else None,
            "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("roots", type=Path, nargs="+", metavar="ROOT",
                   help="finished `t3s demo` / `t3s pipeline` directories (with pipeline.json)")
    p.add_argument("--steps", type=int, nargs="+", required=True, help="snapshot steps to use as theta_b")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()

    from bench.machine import machine_info
    from demo_results import mean_sd  # tools/ is on the path when this script runs
    from t3s_nemo.io import atomic_write_json

    names = [r.resolve().name for r in a.roots]
    if len(set(names)) != len(names):
        raise SystemExit(f"error: the runs need distinct directory names (their pieces go to OUT/<name>): {names}")
    out = a.out.resolve()
    runs = [sweep_run(r.resolve(), a.steps, out) for r in a.roots]
    summary = []
    for i, b in enumerate(a.steps):
        rows = [run["rows"][i] for run in runs]
        summary.append({"theta_b": b, **{k: [r[k] for r in rows] for k in
                                          ("trajectory_accuracy", "masked_fraction", "min_accuracy", "final_accuracy")}})
    atomic_write_json(out / "sweep.json", {"machine": machine_info(), "steps": a.steps, "runs": runs,
                                           "summary": summary})
    picked = ", ".join(f"{Path(r['root']).name}: {r['bottleneck_step']}" for r in runs)
    print(f"\n{len(runs)} run(s); the pipeline's theta_b: {picked}; mean ± sd over runs\n")
    print("| theta_b (step) | SFT accuracy there | masked fraction | T3S lowest | T3S final |")
    print("|---|---|---|---|---|")
    for s in summary:
        frac = statistics.mean(s["masked_fraction"])
        print(f"| {s['theta_b']} | {mean_sd(s['trajectory_accuracy'])} | {frac:.1%} | "
              f"{mean_sd(s['min_accuracy'])} | {mean_sd(s['final_accuracy'])} |")


if __name__ == "__main__":
    main()
