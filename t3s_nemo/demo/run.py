"""`t3s demo`: the T3S pipeline on the bundled synthetic arithmetic distillation set and a tiny model, on CPU.

The stages are the real ones (`t3s pipeline`), scaled down: a tiny Qwen3-shaped model, a few dozen
steps, a handful of sampled answers per snapshot. A random-init model has no skill to lose, so the
demo forces a bottleneck choice even without an accuracy dip and says so.
"""

from __future__ import annotations

from pathlib import Path

from t3s_nemo.console import console

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "demo"


def config_path() -> Path:
    """configs/tiny/sft.yaml: inside the package when installed, at the repository top in a checkout."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[1] / "configs" / "tiny" / "sft.yaml", here.parents[2] / "configs" / "tiny" / "sft.yaml"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("configs/tiny/sft.yaml is missing from this installation")


def demo_overrides(out: Path, steps: int) -> list[str]:
    return [
        f"run_dir={out}",
        f"train.steps={steps}",
        f"pipeline.sft_steps={steps}",
        "pipeline.baselines=[reverse,static-confidence,random]",
        "pipeline.rrt=true",
        "checkpoint.snapshot_interval=1",
        "generation.backend=transformers",
        "generation.n=2",
        "generation.max_new_tokens=48",
        "bottleneck.num_prompts=8",
        f"bottleneck.every={max(1, steps // 4)}",
    ]


def run_demo(out: Path, steps: int, nproc: int, overwrite: bool) -> None:
    import shutil

    from t3s_nemo.trajectory.pipeline import run_pipeline

    out = Path(out)
    if overwrite and out.exists():
        shutil.rmtree(out)
    summary = run_pipeline(config_path(), demo_overrides(out, steps), nproc, force=True)
    hf = out / "t3s-hf"
    if not (hf / "config.json").is_file():
        from t3s_nemo.trajectory.bottleneck import export_snapshot

        console.rule("[bold]7. export the T3S-trained student to Hugging Face")
        export_snapshot(out / "t3s" / "checkpoints" / f"iter_{steps}", hf, Path(summary["data"]) / "tokenizer")
    console.rule("[bold]demo results")
    for name, path in summary["runs"].items():
        console.print(f"{name:>18}: {path}")
    masks = Path(summary["data"]) / "masks"
    console.print(f"theta_b: step {summary['bottleneck_step']} ({out / 'sft' / 'bottleneck.json'})")
    console.print(f"run report: {out / 'report.html'}; accuracy curve: {out / 'sft' / 'accuracy.png'}")
    console.print(f"anchor report: {masks / 't3s_mask.html'} (+ .png, .json; one per mask in {masks})")
    anchors = summary["masks"].get("ar", {}).get("top_anchor_tokens", [])[:10]
    console.print("top imitation anchors: " + ", ".join(repr(a["token"]) for a in anchors))
    console.print(f"T3S student as a Hugging Face model: {hf} (AutoModelForCausalLM.from_pretrained)")
    console.print("The tiny model starts from random weights, so it has no accuracy to lose: the stages run "
                  "as they would on a real student, but the numbers show no Imitation Shock.")
