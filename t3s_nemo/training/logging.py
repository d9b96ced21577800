"""Per-step metrics: run_dir/trajectory.jsonl (one JSON object per optimizer step), TensorBoard, W&B,
and a readable line per log interval on stderr."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Optional

import torch

from t3s_nemo.console import console
from t3s_nemo.io import atomic_write_text

# Dense bf16 peak FLOP/s per GPU, for the MFU estimate (no sparsity).
PEAK_BF16_FLOPS = {"H100": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12, "H200": 989e12, "H800": 989e12,
                   "A100": 312e12, "B200": 2250e12, "GH200": 989e12}  # the longest name that matches wins


def peak_flops() -> Optional[float]:
    """Peak FLOP/s of this rank's accelerator, or None where unknown (CPU: MFU is not reported)."""
    env = os.environ.get("T3S_PEAK_FLOPS")
    if env:
        return float(env)
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_BF16_FLOPS[key]
    return None


class TrajectoryLog:
    """Writer for run_dir/trajectory.jsonl on rank 0; resuming at step s drops records after s."""

    def __init__(self, run_dir: Path, resume_step: int, tensorboard: bool, wandb_project: str, config: dict):
        self.path = run_dir / "trajectory.jsonl"
        keep = []
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    break  # a line cut by a crash ends the usable log
                if rec.get("step", math.inf) <= resume_step:
                    keep.append(line)
        atomic_write_text(self.path, "".join(k + "\n" for k in keep))
        self._file = open(self.path, "a", encoding="utf-8")
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step + 1)
        self.wandb = None
        if wandb_project:
            try:
                import wandb
            except ImportError:
                from t3s_nemo.errors import T3SError

                raise T3SError("config key 'train.wandb_project' needs wandb: pip install 't3s-nemo[wandb]'") from None
            self.wandb = wandb.init(project=wandb_project, dir=str(run_dir), config=config,
                                    name=run_dir.name, resume="allow")

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        step = record["step"]
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and v is not None:
                    self.tb.add_scalar(f"train/{k}", v, step)
        if self.wandb is not None:
            self.wandb.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=step)

    def close(self) -> None:
        self._file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def format_line(rec: dict, steps: int) -> str:
    parts = [f"step {rec['step']}/{steps}", f"loss {rec['loss']:.4f}", f"lr {rec['lr']:.3g}",
             f"grad_norm {rec['grad_norm']:.3g}", f"{rec['tokens_per_s']:,.0f} tok/s"]
    if rec.get("mfu") is not None:
        parts.append(f"MFU {rec['mfu']:.1%}")
    if rec.get("masked_fraction"):
        parts.append(f"masked {rec['masked_fraction']:.1%}")
    if rec.get("moe_aux_loss") is not None:
        parts.append(f"moe_aux {rec['moe_aux_loss']:.4g}")
    return "  ".join(parts)


def print_line(rec: dict, steps: int) -> None:
    console.print(format_line(rec, steps))
