"""`t3s demo`: the Imitation Shock and T3S at toy scale, on CPU, with the real pipeline.

The student (stage 0, t3s_nemo/demo/student.py) already solves the bundled arithmetic task in a terse
style. The demo distils an R1-like teacher's traces of the same problems into it and runs every stage
of `t3s pipeline` (configs/demo/t3s.yaml): the SFT trajectory with snapshots, the bottleneck, the
profile, the masks, T3S retraining from theta_0, the -T3S / static-confidence / random baselines and
RRT, then the train accuracy of every run along its snapshots on one plot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from t3s_nemo.console import console, heading
from t3s_nemo.errors import T3SError


def demo_overrides(out: Path, steps: Optional[int], seed: int, student: Optional[Path]) -> list[str]:
    o = [f"run_dir={out}", f"train.seed={seed}", f"generation.seed={seed}"]
    if steps is not None:
        o += [f"train.steps={steps}", f"pipeline.sft_steps={steps}"]
    if student is not None:
        o.append(f"model.init={Path(student).resolve()}")
    return o


def _settings(cfg) -> dict:
    """What the demo's options set, as the run uses it (--out may be given relative or absolute)."""
    return {"seed": cfg.train.seed, "steps": cfg.pipeline.sft_steps or cfg.train.steps,
            "retraining steps": cfg.train.steps, "student": cfg.model.init}


def run_demo(out: Path, steps: Optional[int], nproc: int, overwrite: bool, seed: int = 1,
             student: Optional[Path] = None, rebuild_student: bool = False) -> dict:
    import shutil
    import time

    from t3s_nemo.demo.student import build_student, demo_config
    from t3s_nemo.trajectory.bottleneck import export_snapshot
    from t3s_nemo.trajectory.pipeline import run_pipeline

    t0 = time.monotonic()
    out = Path(out)
    from t3s_nemo.io import check_replaceable

    # a file in the way, or (with --overwrite, which deletes --out) a --student inside it
    check_replaceable(out, [student] if overwrite and not rebuild_student else [])
    entries = {p.name for p in out.iterdir()} if out.is_dir() else set()
    if entries and not (out / "config.yaml").is_file() and entries != {"student"}:
        # an earlier demo (or pipeline) run starts with config.yaml, or with student/ when stage 0 was
        # interrupted; anything else is someone's data, which --overwrite must not delete either
        raise T3SError(f"--out {out}: a non-empty directory that is not a demo run; choose another --out")
    if student is not None and not rebuild_student and not (Path(student) / "config.json").is_file():
        raise T3SError(f"--student {student}: not a Hugging Face model directory (no config.json)")
    if not overwrite and (out / "config.yaml").is_file():
        # the demo's stages resume, and a stage that finished is not redone: a rerun with another seed or
        # step count would show the earlier run's results under the new settings
        from t3s_nemo.config import load_config

        made = (Path(student) if student else out / "student") if rebuild_student else student
        try:
            before = _settings(load_config(out / "config.yaml"))
        except T3SError as e:
            raise T3SError(f"--out {out} holds a demo run whose config.yaml this version cannot read ({e}); add "
                           "--overwrite to redo it, or choose another --out") from None
        now = _settings(load_config(demo_config(), demo_overrides(out, steps, seed, made)))
        changes = [f"{k}: {before[k]!r} -> {now[k]!r}" for k in now if before[k] != now[k]]
        if changes:
            raise T3SError(f"--out {out} holds a demo run made with other settings ({'; '.join(changes)}); add "
                           "--overwrite to redo it with these, or choose another --out")
    if overwrite and out.exists():
        shutil.rmtree(out)
    if rebuild_student:
        student = build_student(Path(student) if student else out / "student", nproc)
    summary = run_pipeline(demo_config(), demo_overrides(out, steps, seed, student), nproc)
    final = max(int(p.name.split("_")[1]) for p in (out / "t3s" / "checkpoints").glob("iter_*"))
    hf = out / "t3s-hf"
    if not (hf / "config.json").is_file():
        heading("8. export the T3S-trained student to Hugging Face")
        export_snapshot(out / "t3s" / "checkpoints" / f"iter_{final}", hf, Path(summary["data"]) / "tokenizer")
        console.print(f"wrote {hf} (step {final}; transformers and vLLM load it as-is)")
    heading("demo results")
    from t3s_nemo.io import read_json

    curves = read_json(out / "curves.json", "accuracy curves")
    console.print(f"theta_0 train accuracy {curves['theta0_accuracy']:.1%}; theta_b = step {summary['bottleneck_step']}")
    for r in curves["table"]:
        console.print(f"{r['method']:>18}: lowest {r['min_accuracy']:.1%} (step {r['min_step']}), "
                      f"final {r['final_accuracy']:.1%} (step {r['final_step']}), {r['final_mean_tokens']:.0f} tokens per answer")
    anchors = summary["masks"].get("ar", {}).get("top_anchor_tokens", [])[:10]
    console.print("top imitation anchors: " + ", ".join(repr(a["token"]) for a in anchors))
    masks = Path(summary["data"]) / "masks"
    console.print(f"accuracy per method: {out / 'accuracy_curves.png'} (table {out / 'results.md'})")
    console.print(f"run report: {out / 'report.html'}; anchor report: {masks / 't3s_mask.html'}")
    console.print(f"mechanism: t3s analyze gradients {out / 'sft'}; t3s analyze transfer {out / 'sft'}")
    console.print(f"T3S student as a Hugging Face model: {hf}")
    console.print(f"demo took {time.monotonic() - t0:.0f} s")
    return {"summary": summary, "curves": curves}
