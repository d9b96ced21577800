"""`t3s demo`: the pipeline on the bundled synthetic arithmetic distillation set and a tiny model, on CPU.

Runs the stages that exist in this version, in order, in one run directory; each stage's outputs are
what the real stage writes for a Qwen3 student.
"""

from __future__ import annotations

from pathlib import Path

from t3s_nemo.console import console

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "demo"
CONFIG = Path(__file__).resolve().parent.parent / "configs" / "tiny" / "sft.yaml"


def config_path() -> Path:
    """configs/tiny/sft.yaml: inside the package when installed, at the repository top in a checkout."""
    for candidate in (CONFIG, Path(__file__).resolve().parents[2] / "configs" / "tiny" / "sft.yaml"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("configs/tiny/sft.yaml is missing from this installation")


def run_demo(out: Path, steps: int, nproc: int, overwrite: bool) -> None:
    from t3s_nemo.cli import launch_recipe
    from t3s_nemo.data.pack import PackOptions, pack

    out = Path(out)
    data = out / "data"
    if overwrite or not (data / "meta.json").is_file():
        console.rule("[bold]1. pack the distillation set")
        summary = pack([ASSETS / "train.jsonl"], ASSETS / "tokenizer", data,
                       PackOptions(seq_length=1024, overwrite=True))
        for line in summary.lines():
            console.print(line)
    console.rule("[bold]2. SFT trajectory run (snapshot every step)")
    launch_recipe("t3s_nemo.recipes.train", [
        "--mode", "sft", str(config_path()), f"run_dir={out / 'sft'}", f"data.path={data}",
        f"train.steps={steps}", "checkpoint.snapshot_interval=1",
        "resume=never" if overwrite else "resume=auto",
    ], nproc)
    console.rule("[bold]not yet in this version")
    console.print("bottleneck -> profile -> mask -> masked retraining -> export arrive with the next stages; "
                  f"the trajectory is in {out / 'sft' / 'trajectory.jsonl'} and {out / 'sft' / 'snapshots'}")
