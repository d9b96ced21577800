"""Masked vs unmasked training step, and tokens/s + MFU, in one process on one machine.

    python bench/train_step.py [--preset tiny] [--seq-length 1024] [--steps 20] [--out bench/results/train_step.json]

Both variants run the real recipe pieces (megatron GPTModel, DDP, distributed optimizer, the T3S loss
hook through get_forward_backward_func) on the same bins, alternating step by step so drift in machine
load hits both alike. The masked variant carries a random 50% T3S mask on the response tokens.
Target: masked / unmasked median step time <= 1.01.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_data import demo_packed  # noqa: E402
from machine import machine_info  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--seq-length", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20, help="steps per variant (after 2 warm-up steps each)")
    ap.add_argument("--global-batch", type=int, default=4)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "train_step.json"))
    a = ap.parse_args()

    from t3s_nemo.config import Config  # first: it quiets megatron-core's import-time warnings

    from megatron.core.distributed import finalize_model_grads
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from t3s_nemo.data.dataset import PackedBins, collate
    from t3s_nemo.data.packed import PackedDataset
    from t3s_nemo.io import atomic_write_json
    from t3s_nemo.model.qwen3 import step_flops
    from t3s_nemo.training.data import sum_sq_lengths
    from t3s_nemo.training.distributed import init_distributed, init_model_parallel
    from t3s_nemo.training.logging import peak_flops
    from t3s_nemo.training.loss import t3s_forward_step
    from t3s_nemo.training.setup import build_model, build_optimizer, vocab_rows, wrap_ddp

    packed = PackedDataset(demo_packed(a.seq_length))
    init_distributed()
    cfg = Config()
    cfg.model.preset = a.preset
    cfg.train.global_batch_size = a.global_batch
    init_model_parallel(cfg.parallel)
    bundle = build_model(cfg, vocab_rows(packed.vocab_size, cfg.parallel.tp), packed.seq_length)
    model = wrap_ddp(bundle, cfg)
    optimizer = build_optimizer(model, cfg, bundle.dtype)
    bundle.tconfig.finalize_model_grads_func = finalize_model_grads
    fb = get_forward_backward_func()
    bins = PackedBins(packed)
    plain = [collate([bins[i % len(bins)]]) for i in range(a.global_batch)]
    g = torch.Generator().manual_seed(0)
    masked = []
    for b in plain:
        m = dict(b)
        keep = (torch.rand(b["loss_weight"].shape, generator=g) < 0.5).float()
        m["loss_weight"] = b["loss_weight"] * keep
        masked.append(m)
    tokens_per_step = sum(int((b["segment_ids"] >= 0).sum()) for b in plain)
    flops_per_step = step_flops(bundle.shape, bundle.vocab_size, tokens_per_step, sum_sq_lengths(plain))

    def step(batches) -> float:
        t0 = time.perf_counter()
        for m in model:
            m.zero_grad_buffer()
        optimizer.zero_grad()
        fb(forward_step_func=t3s_forward_step, data_iterator=iter(batches), model=model,
           num_microbatches=len(batches), seq_length=packed.seq_length, micro_batch_size=1, forward_only=False)
        optimizer.step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for _ in range(2):
        step(plain), step(masked)
    times = {"unmasked": [], "masked": []}
    for _ in range(a.steps):
        times["unmasked"].append(step(plain))
        times["masked"].append(step(masked))
    med = {k: statistics.median(v) for k, v in times.items()}
    tps = tokens_per_step / med["unmasked"]
    peak = peak_flops()
    result = {
        "benchmark": "train_step",
        "preset": a.preset,
        "seq_length": packed.seq_length,
        "tokens_per_step": tokens_per_step,
        "steps_per_variant": a.steps,
        "median_step_s": med,
        "masked_over_unmasked": med["masked"] / med["unmasked"],
        "target_masked_over_unmasked": 1.01,
        "tokens_per_s": tps,
        "mfu": flops_per_step / med["unmasked"] / peak if peak else None,  # as the training log counts it
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "machine": machine_info(),
    }
    atomic_write_json(Path(a.out), result)
    print(json.dumps({k: result[k] for k in ("median_step_s", "masked_over_unmasked", "tokens_per_s", "mfu")}, indent=2))


if __name__ == "__main__":
    main()
