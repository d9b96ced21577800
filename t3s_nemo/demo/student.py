"""Stage 0 of the demo: the student that has a skill to lose.

A T3S demo needs a student that already solves the task in its own style, so that distilling the
teacher's style can make it worse (the Imitation Shock). The bundled student (assets/demo/student, a
Hugging Face Qwen3 directory, 0.8M parameters, 3.4 MB) was made by `build_student` below: plain SFT of
a random-init 4-layer model on the 4,096 terse student-style traces of assets/demo/student.jsonl
(problems disjoint from the distillation set's), in two phases, the second a warm restart with a lower
peak learning rate. It answers 98.4% of the 256 distillation prompts correctly (greedy).

`t3s demo --rebuild-student DIR` reruns it (about 7 minutes on 2 CPU cores); the demo then uses DIR.
A rebuild with today's code is a student of the same quality (31/32 of the demo's prompts) but not the
bundled weights bit for bit (they differ by up to 0.26), so its demo numbers differ from
docs/results/demo.md, which are for the bundled student (seed 1 on a rebuild: theta_b = step 8, T3S
final 0.375 instead of 0.656). The engine did not change: the code that made the bundled student
(commit cb0c96a) gives today's rebuild bit for bit (equal losses over phase 1 and the first 400 steps of
phase 2). The bundled weights come from a build that was not one uninterrupted run; most likely the CPU
mode's memory leak (fixed since, ~25 MB per step) made the 1,000-step build outgrow its box and it was
resumed, and a resumed run equals an uninterrupted one to about 1e-6, not bitwise.
"""

from __future__ import annotations

import json
from pathlib import Path

from t3s_nemo.console import console

BUNDLED = Path(__file__).resolve().parent.parent / "assets" / "demo" / "student"

# (steps, peak lr, min lr, warmup, seed): the two phases that made the bundled student
PHASES = ((400, 3.0e-3, 1.0e-4, 20, 1234), (600, 1.5e-3, 5.0e-5, 10, 7))


def demo_config() -> Path:
    """configs/demo/t3s.yaml: inside the package when installed, at the repository top in a checkout."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[1] / "configs" / "demo" / "t3s.yaml", here.parents[2] / "configs" / "demo" / "t3s.yaml"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("configs/demo/t3s.yaml is missing from this installation")


def build_student(out: Path, nproc: int = 1, phases=PHASES) -> Path:
    """Pre-train the demo student on the student-style traces and export it to out (a HF directory).

    phases: (steps, peak lr, min lr, warmup, seed) per phase; tests pass shorter ones.
    """
    from t3s_nemo.cli import launch_recipe
    from t3s_nemo.trajectory.bottleneck import export_snapshot

    out = Path(out).resolve()
    work = out.with_name(out.name + ".work")
    config = demo_config()
    init = ""
    for k, (steps, lr, min_lr, warmup, seed) in enumerate(phases):
        run = work / f"phase{k + 1}"
        console.rule(f"[bold]0. the student, phase {k + 1}/{len(phases)}: {steps} steps of student-style traces")
        if not (run / "checkpoints" / f"iter_{steps}" / "t3s.json").is_file():
            data = [f"data.path={work / 'phase1' / 'data'}"] if k else ["data.input=pkg:assets/demo/student.jsonl"]
            launch_recipe("t3s_nemo.recipes.train", [
                "--mode", "sft", str(config), f"run_dir={run}", *data, f"model.init={init}", f"train.steps={steps}",
                f"train.lr={lr}", f"train.min_lr={min_lr}", f"train.warmup_steps={warmup}", f"train.seed={seed}",
                "train.log_interval=50", "checkpoint.snapshot_interval=0", "resume=auto"], nproc)
        init = str(run / "checkpoints" / f"iter_{steps}")
    export_snapshot(Path(init), out, work / "phase1" / "data" / "tokenizer")
    (out / "t3s_export.json").unlink(missing_ok=True)
    (out / "student.json").write_text(json.dumps({
        "made_by": "t3s demo --rebuild-student (t3s_nemo/demo/student.py)",
        "data": "pkg:assets/demo/student.jsonl (4,096 student-style traces)",
        "config": "configs/demo/t3s.yaml",
        "phases": [dict(zip(("steps", "lr", "min_lr", "warmup_steps", "seed"), p)) for p in phases],
    }, indent=2) + "\n")
    console.print(f"student written to {out}; check it with `t3s eval {out} --benchmark ... --n 1 --temperature 0`")
    return out
