"""`t3s profile RUN`: log p at theta_0 and theta_b for every response token -> logp0, logpb, delta channels."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from t3s_nemo.checkpoint import weights as W
from t3s_nemo.config import load_config
from t3s_nemo.console import console
from t3s_nemo.data.packed import PackedDataset, load_channel_file
from t3s_nemo.errors import T3SError
from t3s_nemo.io import read_json


def selectors(run_dir: Path, cfg) -> tuple[Path, Path]:
    """(theta_0, theta_b) checkpoints: the profile.* keys, else the run's step-0 snapshot and bottleneck."""
    base = Path(cfg.profile.selector_base) if cfg.profile.selector_base else run_dir / "snapshots" / "step_0"
    if cfg.profile.selector_bottleneck:
        bottleneck = Path(cfg.profile.selector_bottleneck)
    else:
        info = read_json(run_dir / "bottleneck.json", "bottleneck result (run `t3s bottleneck` first)")
        bottleneck = Path(info["bottleneck_dir"])
    for p in (base, bottleneck):
        if not W.is_complete(p):
            raise T3SError(f"{p}: not a complete checkpoint (theta_0 needs checkpoint.snapshot_step0=true "
                           "in the trajectory run, or set profile.selector_base)")
    return base, bottleneck


def profile_run(run_dir: Path, nproc: int = 1, overrides: Optional[list[str]] = None,
                parallel: Optional[list[str]] = None) -> dict:
    from t3s_nemo.cli import launch_recipe

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise T3SError(f"{run_dir}: run directory not found")
    cfg = load_config(run_dir / "config.yaml", overrides)
    base, bottleneck = selectors(run_dir, cfg)
    out = run_dir / "profile"
    launch_recipe("t3s_nemo.recipes.profile", [
        "--data", cfg.data.path, "--checkpoint", str(base), "--checkpoint-b", str(bottleneck), "--out", str(out),
        "--micro-batch-size", str(cfg.profile.micro_batch_size), *(parallel or []),
    ], nproc)
    return attach(PackedDataset(cfg.data.path), out, base, bottleneck)


def attach(ds: PackedDataset, out: Path, base: Path, bottleneck: Path) -> dict:
    """Add logp0, logpb, delta from a profile output directory to the dataset; returns a summary."""
    info = {"selector_base": str(base), "selector_bottleneck": str(bottleneck),
            "selector_base_step": W.read_marker(base).get("step"),
            "selector_bottleneck_step": W.read_marker(bottleneck).get("step")}
    for channel, fname in (("logp0", "logp_a.npz"), ("logpb", "logp_b.npz"), ("delta", "delta.npz")):
        ds.add_channel(channel, load_channel_file(out / fname), dtype="float32", span="response", fill=0.0,
                       overwrite=True, info=info)
    delta = np.concatenate([ds.read_example(i, "delta")[ds.response_slice(i)] for i in range(ds.num_examples)])
    summary = {"examples": ds.num_examples, "response_tokens": int(len(delta)),
               "anchor_fraction": float((delta > 0).mean()), "mean_delta": float(delta.mean()),
               "below_base_fraction": float((delta < 0).mean()), **info}
    console.print(f"delta on {summary['response_tokens']:,} response tokens: {summary['anchor_fraction']:.1%} "
                  f"rose (anchors), {summary['below_base_fraction']:.1%} fell; channels logp0, logpb, delta "
                  f"added to {ds.path}")
    return summary
