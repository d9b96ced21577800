"""`t3s analyze gradients|transfer RUN`: the paper's mechanism diagnostics on a profiled trajectory run.

The numbers come from recipes/analyze.py (the training engine's model, TP-aware); this module picks the
snapshots, launches the recipe and draws the plots.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from t3s_nemo.errors import T3SError
from t3s_nemo.io import read_json


def _run_data(run: Path) -> Path:
    from t3s_nemo.config import resolve_path
    from t3s_nemo.trajectory.bottleneck import load_run_config

    from t3s_nemo.config import run_data

    return Path(resolve_path(run_data(load_run_config(run), run)))


def _snapshots(run: Path) -> list[tuple[int, Path]]:
    from t3s_nemo.checkpoint.manager import step_dirs

    if not Path(run).is_dir():
        raise T3SError(f"{run}: run directory not found")
    snaps = step_dirs(run / "snapshots")
    if not snaps:
        from t3s_nemo.config import pipeline_hint

        raise T3SError(f"{run}/snapshots: no complete snapshots"
                       + (pipeline_hint(run) or " (a trajectory run with checkpoint.snapshot_interval)"))
    return snaps


def analyze_gradients(run: Path, every: int = 1, num_bins: int = 16, tp: int = 1, nproc: int = 1,
                      out: Optional[Path] = None) -> dict:
    """Anchor vs other gradient norms and cosine per snapshot -> RUN/analysis/gradients.{json,png}."""
    from t3s_nemo.cli import launch_recipe

    run = Path(run).resolve()
    if every < 1:
        raise T3SError("--every: must be >= 1")
    snaps = _snapshots(run)
    chosen = [(s, p) for i, (s, p) in enumerate(snaps) if i % every == 0 or i == len(snaps) - 1]
    data = _run_data(run)  # before anything is written
    out = Path(out) if out else run / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    args = ["gradients", "--data", str(data), "--out", str(out / "gradients.json"),
            "--num-bins", str(num_bins), f"parallel.tp={tp}"]
    for step, path in chosen:
        args += ["--checkpoint", str(path), "--step", str(step)]
    launch_recipe("t3s_nemo.recipes.analyze", args, nproc)
    result = read_json(out / "gradients.json", "gradient analysis")
    bottleneck = run / "bottleneck.json"
    b = read_json(bottleneck, "bottleneck").get("bottleneck_step") if bottleneck.is_file() else None
    plot_gradients(result, out / "gradients.png", b)
    return result


def analyze_transfer(run: Path, checkpoint: Optional[str] = None, lr: Optional[float] = None, groups: int = 4,
                     num_bins: int = 16, tp: int = 1, nproc: int = 1, out: Optional[Path] = None) -> dict:
    """The loss-transfer matrix at one snapshot (default theta_0) -> RUN/analysis/transfer.{json,png}."""
    from t3s_nemo.cli import launch_recipe
    from t3s_nemo.trajectory.bottleneck import load_run_config

    run = Path(run).resolve()
    if groups < 2:
        raise T3SError("--groups: must be >= 2")
    snaps = dict(_snapshots(run))
    if checkpoint is None:
        step = min(snaps)
        path = snaps[step]
    elif checkpoint.removeprefix("step_").isdigit():
        step = int(checkpoint.removeprefix("step_"))
        if step not in snaps:
            raise T3SError(f"--checkpoint {checkpoint}: {run}/snapshots has no step_{step} "
                           f"(steps {', '.join(map(str, sorted(snaps)))})")
        path = snaps[step]
    else:
        step, path = None, Path(checkpoint)
        from t3s_nemo.checkpoint import weights as W

        if not W.is_complete(path):
            raise T3SError(f"--checkpoint {checkpoint}: expected a step (N or step_N of {run}/snapshots) or a "
                           "checkpoint directory")
    lr = load_run_config(run).train.lr if lr is None else lr
    data = _run_data(run)  # before anything is written
    out = Path(out) if out else run / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    launch_recipe("t3s_nemo.recipes.analyze", [
        "transfer", "--data", str(data), "--checkpoint", str(path), "--out", str(out / "transfer.json"),
        "--lr", repr(lr), "--groups", str(groups), "--num-bins", str(num_bins), f"parallel.tp={tp}"], nproc)
    result = read_json(out / "transfer.json", "transfer analysis")
    plot_transfer(result, out / "transfer.png", step)
    return result


def plot_gradients(result: dict, path: Path, bottleneck_step: Optional[int] = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    steps = [r["step"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(steps, [r["anchor_grad_norm"] for r in rows], "o-", label=f"anchors (delta>0, {result['anchor_fraction']:.0%})")
    ax1.plot(steps, [r["other_grad_norm"] for r in rows], "s-", label="other response tokens")
    ax1.set_yscale("log")
    ax1.set_xlabel("step")
    ax1.set_ylabel("gradient norm (share of the SFT loss)")
    ax1.legend(fontsize=8)
    ax2.plot(steps, [r["cosine"] if r["cosine"] is not None else float("nan") for r in rows], "o-", color="C2")
    ax2.axhline(0, color="grey", lw=0.8)
    ax2.set_ylim(-1, 1)
    ax2.set_xlabel("step")
    ax2.set_ylabel("cosine(anchor grad, other grad)")
    for ax in (ax1, ax2):
        if bottleneck_step is not None:
            ax.axvline(bottleneck_step, color="red", ls="--", lw=0.8, label="theta_b")
    fig.suptitle("Gradient groups along the trajectory")
    fig.tight_layout()
    _save(fig, path)


def plot_transfer(result: dict, path: Path, step: Optional[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    m = np.array(result["matrix"])
    n = len(m)
    lim = float(np.abs(m).max()) or 1.0
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim)
    labels = [f"Q{i + 1}" for i in range(n)]
    ax.set_xticks(range(n), labels)
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("loss change on group j (held-out bins)")
    ax.set_ylabel("one SGD step on group i")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{m[i, j]:+.3f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, shrink=0.8)
    where = f"step {step}" if step is not None else Path(result["checkpoint"]).name
    ax.set_title(f"Loss transfer at {where} (Q1 = lowest delta)", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
