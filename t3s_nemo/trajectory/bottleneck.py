"""The Imitation Bottleneck theta_b: the trajectory snapshot with the lowest training accuracy.

For each selected snapshot of a trajectory run: export it to a temporary Hugging Face directory, in this
process (not with generation.backend=megatron, which samples from the snapshot itself), sample
generation.n answers to the training prompts, verify them against the gold answers (math-verify), and
save the result to RUN/bottleneck/step_N.json (a rerun skips those). A rule then picks theta_b on the
accuracy curve, and a dip check refuses runs without an Imitation Shock (T3S does not apply to them).

    RUN/bottleneck/step_N.json   per snapshot: accuracy, mean tokens, correct samples per prompt
    RUN/bottleneck.json          the curve, the rule and its settings, theta_b, the dip
    RUN/accuracy.png             train accuracy and training loss against step, theta_b marked
"""

from __future__ import annotations

import io
import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from t3s_nemo.errors import T3SError
from t3s_nemo.io import atomic_write_bytes

RESULTS = "bottleneck"
SUMMARY = "bottleneck.json"
PLOT = "accuracy.png"
# the keys `t3s bottleneck RUN key=value` may change; the rest of the run's config is what was trained
OVERRIDABLE = ("generation.", "bottleneck.", "data.path")
# launcher variables a sampler child must not inherit: it is one process, whatever launched us
_LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
               "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_USE_AGENT_STORE")


# ---- rules: pure functions on the accuracy curve (index 0 is theta_0, never a candidate) --------------
def argmin(accuracy: Sequence[float], tolerance: float = 0.0) -> int:
    """The snapshot with the lowest accuracy (the earliest on ties).

    tolerance > 0: the earliest snapshot within `tolerance` of the lowest. On a curve that sits on a
    floor (a shock without recovery), which floor snapshot is lowest is sampling noise; this picks where
    the floor starts instead.
    """
    _check_curve(accuracy)
    a = np.asarray(accuracy[1:], dtype=float)
    return 1 + int(np.flatnonzero(a <= a.min() + tolerance + 1e-12)[0])


def smooth(accuracy: Sequence[float], window: int) -> list[float]:
    """Centred moving average over `window` snapshots, the window shrunk at both ends of the curve."""
    if window < 1:
        raise T3SError(f"bottleneck.window: must be >= 1, got {window}")
    a = np.asarray(accuracy, dtype=float)
    before = (window - 1) // 2
    after = window - 1 - before
    return [float(a[max(0, i - before) : i + after + 1].mean()) for i in range(len(a))]


def moving_average(accuracy: Sequence[float], window: int, tolerance: float = 0.0) -> int:
    """argmin of the centred moving average: one unlucky snapshot cannot become theta_b on its own."""
    _check_curve(accuracy)
    return argmin(smooth(accuracy, window), tolerance)


def first_recovery(accuracy: Sequence[float], recovery: float) -> Optional[int]:
    """The first local minimum from which accuracy climbs at least `recovery` before going any lower.

    Walks the curve keeping the lowest point so far (after theta_0); returns it at the first snapshot
    that is `recovery` above it. None when the curve never recovers that much.
    """
    _check_curve(accuracy)
    low = 1
    for i in range(2, len(accuracy)):
        if accuracy[i] < accuracy[low]:
            low = i
        elif accuracy[i] - accuracy[low] >= recovery - 1e-12:
            return low
    return None


def _check_curve(accuracy: Sequence[float]) -> None:
    if len(accuracy) < 2:
        raise T3SError(f"the bottleneck search needs theta_0 and at least one later snapshot, got {len(accuracy)} snapshot(s)")


@dataclass
class Selection:
    index: int  # position of theta_b in the curve
    base_accuracy: float  # theta_0's accuracy (the first point of the curve)
    min_accuracy: float  # the value the rule minimised (the smoothed accuracy for moving_average)
    dip: float  # base_accuracy - min_accuracy
    no_dip: bool  # dip < margin: no Imitation Shock
    recovered: Optional[bool] = None  # first_recovery: whether accuracy climbed back by `recovery`
    smoothed: Optional[list[float]] = None  # moving_average: the smoothed curve


def select(accuracy: Sequence[float], rule: str, window: int = 3, recovery: float = 0.05,
           margin: float = 0.02, tolerance: float = 0.0) -> Selection:
    """Apply a rule to the curve (accuracy[0] = theta_0) and measure the dip below theta_0."""
    _check_curve(accuracy)
    acc = [float(a) for a in accuracy]
    smoothed, recovered = None, None
    if tolerance < 0:
        raise T3SError(f"bottleneck.tolerance: must be >= 0, got {tolerance}")
    if rule == "argmin":
        index = argmin(acc, tolerance)
        value = acc[index]
    elif rule == "moving_average":
        smoothed = smooth(acc, window)
        index = moving_average(acc, window, tolerance)
        value = smoothed[index]
    elif rule == "first_recovery":
        found = first_recovery(acc, recovery)
        recovered = found is not None
        # never climbed back within the evaluated snapshots: the lowest point so far is the best guess
        index = found if found is not None else argmin(acc)
        value = acc[index]
    else:
        raise T3SError(f"bottleneck.rule '{rule}' is not one of argmin | moving_average | first_recovery")
    dip = acc[0] - value
    return Selection(index=index, base_accuracy=acc[0], min_accuracy=value, dip=dip,
                     no_dip=dip < margin - 1e-12, recovered=recovered, smoothed=smoothed)


def no_dip_message(run_dir: Path, steps: Sequence[int], sel: Selection, margin: float) -> str:
    return (
        f"no Imitation Shock found in {run_dir}: train accuracy never fell bottleneck.margin={margin:g} below "
        f"theta_0's {sel.base_accuracy:.3f} (step {steps[0]}); the lowest the rule found is "
        f"{sel.min_accuracy:.3f} at step {steps[sel.index]} (dip {sel.dip:+.3f}). T3S does not apply to this run "
        f"(curve: {run_dir / PLOT}); pass --force to pick theta_b anyway"
    )


# ---- snapshots, prompts, losses ------------------------------------------------------------------------
def select_snapshots(snapshots: Sequence[tuple[int, Path]], every: int, start: Optional[int],
                     end: Optional[int]) -> list[tuple[int, Path]]:
    """Every k-th snapshot with start <= step <= end; step 0 (theta_0, the dip's reference) always stays."""
    if every < 1:
        raise T3SError(f"bottleneck.every: must be >= 1, got {every}")
    inside = [(s, d) for s, d in snapshots if (start is None or s >= start) and (end is None or s <= end)]
    chosen = inside[::every]
    step0 = [(s, d) for s, d in snapshots if s == 0]
    if step0 and (not chosen or chosen[0][0] != 0):
        chosen = step0 + chosen
    return chosen


def prompt_indices(num_examples: int, num_prompts: Optional[int], seed: int) -> list[int]:
    """All examples, or a seeded random subset of num_prompts (in dataset order).

    Packed datasets order examples by bin (longest first), so their first examples are no fair sample.
    """
    if num_prompts is None or num_prompts >= num_examples:
        return list(range(num_examples))
    if num_prompts < 1:
        raise T3SError(f"bottleneck.num_prompts: must be >= 1 (or null for all), got {num_prompts}")
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(num_examples, size=num_prompts, replace=False))


def training_prompts(ds, num_prompts: Optional[int], seed: int) -> tuple[list[str], list[list[int]], list[str]]:
    """(example ids, prompt token ids, gold answers) of the training prompts the bottleneck samples."""
    indices = prompt_indices(ds.num_examples, num_prompts, seed)
    answers = []
    for i in indices:
        a = ds.answers[i]
        if a is None or str(a).strip() == "":
            raise T3SError(f"{ds.path}: example '{ds.ids[i]}' has no gold answer; the bottleneck stage verifies "
                           "answers (pack the data with its answer field)")
        answers.append(str(a))
    lengths = ds.prompt_lengths
    return [ds.ids[i] for i in indices], [ds.read_example(i)[: int(lengths[i])].tolist() for i in indices], answers


def generation_settings(cfg, backend: str) -> dict:
    g = cfg.generation
    return {"backend": backend, "n": g.n, "temperature": g.temperature, "top_p": g.top_p,
            "max_new_tokens": g.max_new_tokens, "seed": g.seed, "batch_size": g.batch_size, "tp": g.tp}


def read_losses(run_dir: Path) -> dict[int, float]:
    """step -> training loss from RUN/trajectory.jsonl (the last record of a step wins: resumed runs)."""
    path = run_dir / "trajectory.jsonl"
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
            step, loss = int(rec["step"]), rec.get("loss")
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a crash
        if isinstance(loss, (int, float)) and math.isfinite(loss):
            out[step] = float(loss)
        else:
            out.pop(step, None)
    return out


# ---- one snapshot --------------------------------------------------------------------------------------
def export_snapshot(snapshot: Path, out: Path, tokenizer_dir: Path) -> None:
    """HF export of a snapshot, in this process (torch.distributed.checkpoint reads it on the host)."""
    from t3s_nemo.model.hf import export

    try:
        export(snapshot, out, tokenizer_dir, overwrite=True)
    except T3SError as e:
        raise T3SError(f"{snapshot}: export for generation failed: {e}") from None


def evaluate_snapshot(snapshot: Path, step: int, prompts: list[list[int]], answers: list[str], gen: dict,
                      tokenizer_dir: Path, work_dir: Path,
                      on_phase: Callable[[str], None] = lambda s: None,
                      on_progress: Optional[Callable[[int], None]] = None) -> dict:
    """Export, sample, verify: the per-snapshot result (what RUN/bottleneck/step_N.json holds)."""
    from t3s_nemo.trajectory.generate import generate
    from t3s_nemo.trajectory.verify import is_correct

    t0 = time.monotonic()
    work_dir.mkdir(parents=True, exist_ok=True)
    settings = (gen["n"], gen["temperature"], gen["top_p"], gen["max_new_tokens"], gen["seed"], gen["batch_size"])
    if gen["backend"] == "megatron":  # samples from the snapshot itself
        on_phase("generate")
        samples = generate(snapshot, prompts, *settings, backend="megatron", tp=gen["tp"], on_progress=on_progress,
                           tokenizer_dir=tokenizer_dir)
    else:
        hf = Path(tempfile.mkdtemp(prefix=f".hf-step_{step}-", dir=work_dir))
        try:
            on_phase("export")
            export_snapshot(snapshot, hf, tokenizer_dir)
            on_phase("generate")
            samples = generate(hf, prompts, *settings, backend=gen["backend"], tp=gen["tp"], on_progress=on_progress)
        finally:
            shutil.rmtree(hf, ignore_errors=True)
    on_phase("verify")
    correct = [sum(is_correct(s.text, a) for s in ss) for ss, a in zip(samples, answers)]
    tokens = [s.num_tokens for ss in samples for s in ss]
    total = len(prompts) * gen["n"]
    return {
        "step": step,
        "snapshot": str(snapshot),
        "accuracy": sum(correct) / total,
        "mean_tokens": float(np.mean(tokens)),
        "n": gen["n"],
        "prompts": len(prompts),
        "correct": correct,
        "seconds": round(time.monotonic() - t0, 2),
    }


# what a sample's score depends on besides the settings: 2 = stop at the template's end of turn too, and
# read the answer after </think> (older saved results are evaluated again)
SCORING = 2
# the megatron sampler's version in the results it makes: 2 = a row ends at any of the template's stop ids and
# keeps it (recipes/sample.py). Before, the engine ended rows at one id only, so a student that ended a turn
# with another stop ran on to max_new_tokens (more text to read an answer from) and token counts were one short.
MEGATRON_SAMPLER = 2


def result_key(gen: dict, ids: list[str]) -> dict:
    """What a saved per-snapshot result must match to be reused: sampling settings, prompt ids, scoring."""
    return {"generation": {k: gen[k] for k in ("n", "temperature", "top_p", "max_new_tokens", "seed")}, "ids": ids,
            "scoring": SCORING}


def load_result(path: Path, key: dict) -> Optional[dict]:
    """A saved per-snapshot result made with the same settings and prompts, else None."""
    if not path.is_file():
        return None
    try:
        r = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # unreadable or cut short: sampled again
        return None
    if not isinstance(r, dict) or any(r.get(k) != key[k] for k in ("generation", "ids", "scoring")):
        return None
    if r.get("backend") == "megatron" and r.get("megatron_sampler", 1) != MEGATRON_SAMPLER:
        return None
    return r


def evaluate_cached(snapshots: Sequence[tuple[int, Path]], results_dir: Path, prompts: list[list[int]],
                    answers: list[str], gen: dict, key: dict, tokenizer_dir: Path, bar, label: str = "step") -> list[dict]:
    """Evaluate snapshots, reusing RUN/bottleneck/step_N.json results made with the same key; saves new ones."""
    from t3s_nemo.console import console
    from t3s_nemo.io import atomic_write_json

    for step, _ in snapshots:  # temporary exports of an interrupted earlier run (only ours: shards run side by side)
        for stale in results_dir.glob(f".hf-step_{step}-*"):
            shutil.rmtree(stale, ignore_errors=True)
    results = []
    overall = bar.add_task(f"{label.removesuffix('step').strip()} snapshots".strip(), total=len(snapshots))
    for step, snap in snapshots:
        out = results_dir / f"step_{step}.json"
        r = load_result(out, key)
        if r is None:
            if out.exists():
                console.print(f"{label} {step}: saved result used other generation settings, prompts or scoring; evaluating again")
            task = bar.add_task(f"{label} {step}: export", total=len(prompts))
            r = evaluate_snapshot(
                snap, step, prompts, answers, gen, tokenizer_dir, results_dir,
                on_phase=lambda phase, t=task, s=step: bar.update(t, description=f"{label} {s}: {phase}"),
                on_progress=lambda k, t=task: bar.advance(t, k),
            )
            bar.remove_task(task)
            r.update(key, backend=gen["backend"])
            if gen["backend"] == "megatron":
                r["megatron_sampler"] = MEGATRON_SAMPLER
            atomic_write_json(out, r)
            console.print(f"{label} {step}: train accuracy {r['accuracy']:.3f} ({sum(r['correct'])}/"
                          f"{r['prompts'] * r['n']}), {r['mean_tokens']:.0f} tokens per answer, {r['seconds']:.0f} s")
        results.append(r)
        bar.advance(overall)
    bar.remove_task(overall)
    return results


# ---- outputs -------------------------------------------------------------------------------------------
def write_plot(path: Path, steps: Sequence[int], accuracy: Sequence[float], losses: dict[int, float],
               bottleneck_step: Optional[int], smoothed: Optional[Sequence[float]] = None, title: str = "") -> None:
    """accuracy.png: train accuracy (left axis) and training loss (right axis) against step, theta_b marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(steps, accuracy, "o-", color="C0", label="train accuracy")
    if smoothed is not None:
        ax.plot(steps, smoothed, "--", color="C0", alpha=0.5, label="moving average")
    ax.set_xlabel("step")
    ax.set_ylabel("train accuracy", color="C0")
    ax.set_ylim(-0.02, 1.02)
    handles, labels = ax.get_legend_handles_labels()
    if losses:
        ax2 = ax.twinx()
        ls = sorted(losses)
        ax2.plot(ls, [losses[s] for s in ls], "-", color="C1", alpha=0.8, label="training loss")
        ax2.set_ylabel("training loss", color="C1")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if bottleneck_step is not None:
        line = ax.axvline(bottleneck_step, color="C3", linestyle=":", linewidth=1.5)
        ax.annotate(rf"$\theta_b$ = step {bottleneck_step}", xy=(bottleneck_step, 1.0), xytext=(4, -4),
                    textcoords="offset points", color="C3", va="top",
                    bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})
        handles, labels = handles + [line], labels + [r"Imitation Bottleneck $\theta_b$"]
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=len(handles), fontsize="small",
              frameon=False)
    ax.set_title(title or "Train accuracy along the trajectory")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())


# ---- the stage -----------------------------------------------------------------------------------------
def load_run_config(run_dir: Path, overrides: Sequence[str] = ()):
    """RUN/config.yaml plus generation.* / bottleneck.* / data.path overrides."""
    from t3s_nemo.config import load_config, locate_run_data

    for item in overrides:
        key = item.partition("=")[0].strip()
        if not any(key == k or (k.endswith(".") and key.startswith(k)) for k in OVERRIDABLE):
            raise T3SError(f"override '{item}': `t3s bottleneck` takes generation.*, bottleneck.* and data.path "
                           "overrides (the rest is the trained run's config)")
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise T3SError(f"{run_dir}: not a trajectory run directory (no config.yaml)")
    return locate_run_data(load_config(path, list(overrides)), run_dir)


def parse_shard(text: str) -> tuple[int, int]:
    """'I/K' (0 <= I < K): this process evaluates every K-th selected snapshot, starting at the I-th."""
    index, sep, count = text.partition("/")
    try:
        i, k = int(index), int(count)
    except ValueError:
        i, k = -1, 0
    if not sep or k < 1 or not 0 <= i < k:
        raise T3SError(f"--shard {text!r}: expected I/K with 0 <= I < K (e.g. 0/4 for the first of four tasks)")
    return i, k


def run_bottleneck(run_dir: Path, cfg_overrides: Sequence[str] = (), force: Optional[bool] = None,
                   shard: Optional[tuple[int, int]] = None) -> dict:
    """Evaluate the run's snapshots, pick theta_b, write bottleneck.json and accuracy.png; returns bottleneck.json.

    force: pick theta_b even without a dip (None = bottleneck.force). Raises T3SError for a run without
    an Imitation Shock unless forced.
    shard: (I, K) evaluates only every K-th selected snapshot from the I-th (one task of a Slurm job array)
    and returns {"shard", "steps", "accuracy"} without picking theta_b: a later run without a shard finds
    every saved result and only selects.
    """
    from t3s_nemo.checkpoint.manager import step_dirs
    from t3s_nemo.config import resolve_path
    from t3s_nemo.console import progress
    from t3s_nemo.data.packed import PackedDataset
    from t3s_nemo.trajectory.generate import resolve_backend

    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise T3SError(f"{run_dir}: run directory not found")
    cfg = load_run_config(run_dir, cfg_overrides)
    b, g = cfg.bottleneck, cfg.generation
    force = b.force if force is None else force
    backend = resolve_backend(g.backend, cfg.model.objective, g.tp)

    from t3s_nemo.config import pipeline_hint, run_data

    snapshots = step_dirs(run_dir / "snapshots")
    if not snapshots:
        raise T3SError(f"{run_dir}/snapshots: no complete snapshots"
                       + (pipeline_hint(run_dir) or "; they are taken while a run trains: train one into a new "
                          "run_dir with checkpoint.snapshot_interval=1"))
    run_data(cfg, run_dir)
    chosen = select_snapshots(snapshots, b.every, b.start, b.end)
    if len(chosen) < 2:
        raise T3SError(
            f"{run_dir}: {len(chosen)} snapshot(s) selected (bottleneck.every={b.every}, start={b.start}, end={b.end}); "
            "the bottleneck search needs theta_0 and at least one later snapshot"
        )

    data_dir = Path(resolve_path(cfg.data.path))
    if not data_dir.is_dir():
        raise T3SError(f"data.path {data_dir}: packed dataset not found (moved? pass data.path=DIR)")
    ds = PackedDataset(data_dir)
    ids, prompts, answers = training_prompts(ds, b.num_prompts, g.seed)
    gen = generation_settings(cfg, backend)
    key = result_key(gen, ids)
    todo = chosen if shard is None else chosen[shard[0]::shard[1]]
    with progress() as bar:
        results = evaluate_cached(todo, run_dir / RESULTS, prompts, answers, gen, key, ds.tokenizer_dir, bar)

    if shard is not None:
        return {"shard": list(shard), "steps": [s for s, _ in todo], "accuracy": [r["accuracy"] for r in results]}
    return summarize(run_dir, cfg, chosen, results, gen, force)


def summarize(run_dir: Path, cfg, chosen: Sequence[tuple[int, Path]], results: Sequence[dict], gen: dict,
              force: bool) -> dict:
    """Pick theta_b on the evaluated curve and write bottleneck.json and accuracy.png."""
    from t3s_nemo.console import console
    from t3s_nemo.io import atomic_write_json

    b = cfg.bottleneck
    steps = [s for s, _ in chosen]
    accuracy = [r["accuracy"] for r in results]
    losses = read_losses(run_dir)
    sel = select(accuracy, b.rule, b.window, b.recovery, b.margin, b.tolerance)
    if sel.no_dip and not force:
        write_plot(run_dir / PLOT, steps, accuracy, losses, None, sel.smoothed, title="No Imitation Shock found")
        raise T3SError(no_dip_message(run_dir, steps, sel, b.margin))
    if sel.no_dip:
        console.print(f"[yellow]warning:[/] {no_dip_message(run_dir, steps, sel, b.margin).split('; pass')[0]}; "
                      "picking theta_b anyway (--force)")
    if sel.recovered is False:
        console.print(f"[yellow]warning:[/] accuracy never climbed bottleneck.recovery={b.recovery:g} above a minimum; "
                      "theta_b is the lowest snapshot so far (evaluate later snapshots to confirm it)")
    index = sel.index
    if index == len(steps) - 1 and b.rule != "first_recovery":
        console.print(f"[yellow]warning:[/] theta_b is the last evaluated snapshot (step {steps[index]}): accuracy may "
                      "still be falling, and RRT from the final snapshot would be theta_0 itself. If the curve sits "
                      "on a floor, bottleneck.tolerance picks where the floor starts (docs/bottleneck.md)")
    backends = sorted({r.get("backend", gen["backend"]) for r in results})
    snapshots = []
    for i, ((step, _), r) in enumerate(zip(chosen, results)):
        entry = {"step": step, "accuracy": r["accuracy"], "loss": losses.get(step) if step > 0 else None,
                 "mean_tokens": r["mean_tokens"], "n": r["n"], "prompts": r["prompts"]}
        if sel.smoothed is not None:
            entry["smoothed_accuracy"] = sel.smoothed[i]
        snapshots.append(entry)
    summary = {
        "rule": b.rule,
        "window": b.window,
        "recovery": b.recovery,
        "margin": b.margin,
        "tolerance": b.tolerance,
        "every": b.every,
        "start": b.start,
        "end": b.end,
        "num_prompts": results[0]["prompts"],
        "generation": {**gen, "backend": ",".join(backends), "backend_requested": cfg.generation.backend},
        "snapshots": snapshots,
        "bottleneck_step": steps[index],
        "bottleneck_dir": str(chosen[index][1]),
        "bottleneck_accuracy": accuracy[index],
        "base_step": steps[0],
        "base_accuracy": sel.base_accuracy,
        "min_accuracy": sel.min_accuracy,
        "dip": sel.dip,
        "no_dip": sel.no_dip,
        "forced": bool(sel.no_dip and force),
    }
    if sel.recovered is not None:
        summary["recovered"] = sel.recovered
    atomic_write_json(run_dir / SUMMARY, summary)
    write_plot(run_dir / PLOT, steps, accuracy, losses, steps[index], sel.smoothed,
               title=f"Imitation Bottleneck: step {steps[index]} ({b.rule})" + (" — no dip, forced" if sel.no_dip else ""))
    return summary
