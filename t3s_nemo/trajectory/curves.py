"""Train accuracy of every pipeline run along its snapshots: the per-method comparison (`pipeline.curves`).

Every run is evaluated exactly as the bottleneck stage evaluates the trajectory (same prompts, same
sampler settings, results cached in RUN/bottleneck/step_N.json), so the curves are comparable and a
rerun only evaluates what is missing. The retraining runs start from theta_0, so they share the
trajectory's step-0 point. RRT is one point at the trajectory's final step.

Writes ROOT/curves.json, ROOT/accuracy_curves.png and ROOT/results.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from t3s_nemo.errors import T3SError

LABELS = {"sft": "SFT", "t3s": "T3S", "reverse": "-T3S (reverse)", "static-confidence": "static-confidence",
          "static-confidence-low": "static-confidence-low", "random": "random mask", "rrt": "RRT"}


def _evaluate(snapshots: list[tuple[int, Path]], results_dir: Path, ctx: dict, bar, label: str) -> list[dict]:
    from t3s_nemo.trajectory.bottleneck import evaluate_cached

    return evaluate_cached(snapshots, results_dir, ctx["prompts"], ctx["answers"], ctx["gen"], ctx["key"],
                           ctx["tokenizer"], bar, label=f"{label} step")


def accuracy_curves(root: Path, runs: dict[str, str], data: str, every: int = 1) -> dict:
    """Evaluate every run's snapshots (every k-th of the retraining runs, and the last), write the outputs."""
    from t3s_nemo.checkpoint.manager import step_dirs
    from t3s_nemo.console import progress
    from t3s_nemo.data.packed import PackedDataset
    from t3s_nemo.io import atomic_write_json, read_json
    from t3s_nemo.trajectory.bottleneck import (generation_settings, load_run_config, result_key,
                                                training_prompts)
    from t3s_nemo.trajectory.generate import resolve_backend

    root = Path(root)
    if every < 1:
        raise T3SError(f"pipeline.curves_every: must be >= 1, got {every}")
    sft = Path(runs["sft"])
    cfg = load_run_config(sft, [f"data.path={data}"])
    ds = PackedDataset(data)
    ids, prompts, answers = training_prompts(ds, cfg.bottleneck.num_prompts, cfg.generation.seed)
    gen = generation_settings(cfg, resolve_backend(cfg.generation.backend, cfg.model.objective,
                                                     cfg.generation.tp))
    ctx = {"key": result_key(gen, ids), "prompts": prompts, "answers": answers, "gen": gen, "tokenizer": ds.tokenizer_dir}
    bottleneck = read_json(sft / "bottleneck.json", "bottleneck")
    curves: dict[str, dict] = {}
    with progress() as bar:
        sft_snaps = [(s["step"], sft / "snapshots" / f"step_{s['step']}") for s in bottleneck["snapshots"]]
        theta0 = None
        for name, run in runs.items():
            run = Path(run)
            if name == "rrt":
                continue
            if name == "sft":
                snaps = sft_snaps
            else:
                all_snaps = step_dirs(run / "snapshots")
                snaps = [sn for i, sn in enumerate(all_snaps) if (i + 1) % every == 0 or i == len(all_snaps) - 1]
            results = _evaluate(snaps, run / "bottleneck", ctx, bar, LABELS.get(name, name))
            steps, acc, tokens = [r["step"] for r in results], [r["accuracy"] for r in results], [r["mean_tokens"] for r in results]
            if name == "sft":
                theta0 = (steps[0], acc[0], tokens[0]) if steps and steps[0] == 0 else None
            elif theta0 is not None and (not steps or steps[0] != 0):
                steps, acc, tokens = [0] + steps, [theta0[1]] + acc, [theta0[2]] + tokens  # shared theta_0
            curves[name] = {"run": str(run), "steps": steps, "accuracy": acc, "mean_tokens": tokens}
        if "rrt" in runs:
            final = max(s for s, _ in step_dirs(sft / "snapshots"))
            r = _evaluate([(final, Path(runs["rrt"]))], Path(runs["rrt"]).parent / "bottleneck_rrt", ctx, bar, "RRT")[0]
            curves["rrt"] = {"run": runs["rrt"], "steps": [final], "accuracy": [r["accuracy"]], "mean_tokens": [r["mean_tokens"]]}
    summary = {
        "theta0_accuracy": theta0[1] if theta0 else None,
        "bottleneck_step": bottleneck["bottleneck_step"],
        "prompts": len(prompts),
        "generation": {k: gen[k] for k in ("backend", "n", "temperature", "top_p", "max_new_tokens", "seed")},
        "runs": curves,
        "table": [row(name, c) for name, c in curves.items()],
    }
    atomic_write_json(root / "curves.json", summary)
    plot_curves(summary, root / "accuracy_curves.png")
    _write_table(summary, root / "results.md")
    return summary


def row(name: str, c: dict) -> dict:
    acc, steps = c["accuracy"], c["steps"]
    i = min(range(len(acc)), key=lambda k: (acc[k], steps[k]))
    return {"method": name, "min_accuracy": acc[i], "min_step": steps[i], "final_accuracy": acc[-1],
            "final_step": steps[-1], "final_mean_tokens": c["mean_tokens"][-1]}


def plot_curves(summary: dict, path: Path, title: Optional[str] = None) -> None:
    """One plot: train accuracy against step, a line per method, theta_0 and theta_b marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for k, (name, c) in enumerate(summary["runs"].items()):
        if name == "rrt":
            ax.plot(c["steps"], c["accuracy"], "*", ms=12, color="black", label=LABELS["rrt"])
            continue
        style = "-" if name in ("sft", "t3s") else "--"
        ax.plot(c["steps"], c["accuracy"], style, marker="o", ms=3, lw=2 if name in ("sft", "t3s") else 1.2,
                label=LABELS.get(name, name))
    ax.axvline(summary["bottleneck_step"], color="red", ls=":", lw=1, label="theta_b")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"train accuracy ({summary['prompts']} prompts)")
    ax.set_title(title or "Train accuracy per method")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    tmp.replace(path)


def _write_table(summary: dict, path: Path) -> None:
    from t3s_nemo.io import atomic_write_text

    lines = [f"theta_0 train accuracy {summary['theta0_accuracy']:.3f}; theta_b = step {summary['bottleneck_step']}; "
             f"{summary['prompts']} training prompts, {summary['generation']}", "",
             "| method | min accuracy (step) | final accuracy (step) | tokens per answer |", "|---|---|---|---|"]
    for r in summary["table"]:
        lines.append(f"| {LABELS.get(r['method'], r['method'])} | {r['min_accuracy']:.3f} ({r['min_step']}) | "
                     f"{r['final_accuracy']:.3f} ({r['final_step']}) | {r['final_mean_tokens']:.0f} |")
    atomic_write_text(path, "\n".join(lines) + "\n")
