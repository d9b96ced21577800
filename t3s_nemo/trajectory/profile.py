"""`t3s profile RUN`: log p at theta_0 and theta_b for every response token -> logp0, logpb, delta channels."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from t3s_nemo.checkpoint import weights as W
from t3s_nemo.config import load_config, locate_run_data, run_data
from t3s_nemo.console import console
from t3s_nemo.data.packed import PackedDataset, load_channel_file
from t3s_nemo.errors import T3SError
from t3s_nemo.io import read_json


def run_checkpoints(run_dir: Path, base: str = "", bottleneck: str = "") -> tuple[Path, Path]:
    """(theta_0, theta_b): the given checkpoints, else the run's step-0 snapshot and its bottleneck snapshot."""
    from t3s_nemo.config import pipeline_hint

    hint = pipeline_hint(run_dir)
    if hint and not (base and bottleneck):
        raise T3SError(f"{run_dir}: not a trajectory run{hint}")
    theta_0 = Path(base) if base else run_dir / "snapshots" / "step_0"
    if bottleneck:
        theta_b = Path(bottleneck)
    else:
        info = read_json(run_dir / "bottleneck.json", "bottleneck result (run `t3s bottleneck` first)", expect=dict)
        if not isinstance(info.get("bottleneck_dir"), str):
            raise T3SError(f"{run_dir / 'bottleneck.json'}: no 'bottleneck_dir'; run `t3s bottleneck {run_dir}` again")
        theta_b = Path(info["bottleneck_dir"])
    for p, given, what in ((theta_0, base, "theta_0"), (theta_b, bottleneck, "theta_b")):
        if W.is_complete(p):
            continue
        if given:
            raise T3SError(f"{p}: not a complete t3s checkpoint (no {W.MARKER}); {what} must be a snapshot or "
                           "checkpoint directory")
        need = "checkpoint.snapshot_step0=true in the trajectory run" if what == "theta_0" else "its snapshot"
        raise T3SError(f"{p}: not a complete checkpoint ({what} of the run needs {need}); or name {what}: "
                       "--base/--bottleneck for `t3s rrt`, profile.selector_base/selector_bottleneck for `t3s profile`")
    return theta_0, theta_b


def selectors(run_dir: Path, cfg) -> tuple[Path, Path]:
    """The checkpoints that profile theta_0 and theta_b: profile.selector_base / selector_bottleneck (e.g.
    an 8B selector for a 32B student), else the run's own. RRT never uses these: it combines the
    student's own weights (run_checkpoints)."""
    pair = run_checkpoints(run_dir, cfg.profile.selector_base, cfg.profile.selector_bottleneck)
    for p in pair:
        require_ar(p, W.read_marker(p))
    return pair


def require_ar(path, marker: dict) -> None:
    """The profile is causal log p: a masked-diffusion checkpoint does not define it."""
    if marker.get("objective", "ar") != "ar":
        raise T3SError(f"{path}: a {marker['objective']} checkpoint; the profile is causal log p, which a "
                       "masked-diffusion model does not define: profile an AR selector that shares the "
                       "tokenizer (profile.selector_base / selector_bottleneck), then `t3s mask --rule dllm` "
                       "(docs/dllm.md)")


OVERRIDABLE = ("profile.", "data.path")


def load_profile_config(run_dir: Path, overrides: Optional[list[str]] = None):
    """RUN/config.yaml plus profile.* / data.path overrides (the rest is the trained run's config)."""
    run_dir = Path(run_dir)
    for item in overrides or []:
        key = item.partition("=")[0].strip()
        if not any(key == k or (k.endswith(".") and key.startswith(k)) for k in OVERRIDABLE):
            raise T3SError(f"override '{item}': `t3s profile RUN` takes profile.* and data.path overrides "
                           "(the rest is the trained run's config; the layout is --tp/--pp)")
    if not (run_dir / "config.yaml").is_file():
        raise T3SError(f"{run_dir}: not a trajectory run directory (no config.yaml)")
    return locate_run_data(load_config(run_dir / "config.yaml", list(overrides or [])), run_dir)


def run_layout(cfg, world_size: int, tp: Optional[int] = None, pp: Optional[int] = None,
               doing: str = "profiling") -> tuple[list[str], Optional[str]]:
    """(parallel.tp / parallel.pp overrides, a note or None) to profile a run on world_size processes.

    Unset sizes default to the run's own: the model trained in that layout, so its forward pass fits
    there (a 32B student does not fit one GPU at tp=1). Context parallelism is not carried over: the
    profile is forward only, and its CP ranks become data-parallel ones. If world_size cannot hold the
    run's layout (a tp=8 pp=2 run profiled on one 8-GPU node), the unset sizes shrink, pipeline stages
    first (tp=8 pp=1 still splits every weight 8 ways; the forward pass keeps no activations), with a note.
    """
    want_tp, want_pp = tp or cfg.parallel.tp, pp or cfg.parallel.pp
    if not world_size % (want_tp * want_pp) or (tp is not None and pp is not None):
        return [f"parallel.tp={want_tp}", f"parallel.pp={want_pp}"], None
    pps = [pp] if pp is not None else [d for d in range(want_pp, 0, -1) if want_pp % d == 0]
    tps = [tp] if tp is not None else [d for d in range(want_tp, 0, -1) if want_tp % d == 0]
    # the largest model-parallel group that fits, fewer pipeline stages before fewer tensor-parallel ranks
    fits = [(t, q) for t in tps for q in pps if not world_size % (t * q)] or [(tps[-1], pps[-1])]
    new_tp, new_pp = max(fits, key=lambda x: (x[0] * x[1], x[0]))
    note = (f"the run trained at tp={cfg.parallel.tp} pp={cfg.parallel.pp}, which {world_size} process(es) cannot "
            f"hold; {doing} at tp={new_tp} pp={new_pp} (set the process count, or tp and pp)")
    return [f"parallel.tp={new_tp}", f"parallel.pp={new_pp}"], note


def profile_run(run_dir: Path, nproc: int = 1, overrides: Optional[list[str]] = None,
                tp: Optional[int] = None, pp: Optional[int] = None) -> dict:
    """Profile theta_0 and theta_b of a trajectory run on nproc processes (default layout: run_layout)."""
    from t3s_nemo.cli import launch_recipe

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise T3SError(f"{run_dir}: run directory not found")
    cfg = load_profile_config(run_dir, overrides)
    base, bottleneck = selectors(run_dir, cfg)
    run_data(cfg, run_dir)
    out = run_dir / "profile"
    layout, note = run_layout(cfg, nproc, tp, pp)
    if note:
        console.print(f"[yellow]note:[/] {note}")
    launch_recipe("t3s_nemo.recipes.profile", [
        "--data", cfg.data.path, "--checkpoint", str(base), "--checkpoint-b", str(bottleneck), "--out", str(out),
        "--micro-batch-size", str(cfg.profile.micro_batch_size), *layout,
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
