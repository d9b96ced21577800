"""Stage 0 of the demo: the student that has a skill to lose.

A T3S demo needs a student that already solves the task in its own style, so that distilling the
teacher's style can make it worse (the Imitation Shock). The bundled student (assets/demo/student, a
Hugging Face Qwen3 directory, 0.8M parameters, 3.4 MB) was made by `build_student` below: plain SFT of
a random-init 4-layer model on the 4,096 terse student-style traces of assets/demo/student.jsonl
(problems disjoint from the distillation set's), in two phases, the second a warm restart with a lower
peak learning rate. It answers 97.3% of the 256 distillation prompts correctly (greedy; student.json
says how it was measured and what built it).

`t3s demo --rebuild-student DIR` reruns it (about 7 minutes on 2 CPU cores); the demo then uses DIR.
The bundled weights are one uninterrupted `build_student` run at commit 7a5e8e8 (sdpa attention, the
default since) on a 2-core x86-64 CPU with torch 2.14 and megatron-core 0.19; a second run there gave
the same bytes. Another CPU, thread count or library version gives a student of the same quality but
not the same bits (float reductions run in another order), and so other demo numbers than
docs/results/demo.md. A run interrupted and resumed is not bitwise either (about 1e-6): the previous
bundled student was such a build and could not be reproduced exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

from t3s_nemo.console import console, heading

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
        heading(f"0. the student, phase {k + 1}/{len(phases)}: {steps} steps of student-style traces")
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
