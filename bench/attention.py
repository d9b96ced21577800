"""Attention without Transformer Engine: the sdpa spec (the default) vs megatron-core's local spec.

    python bench/attention.py [--preset tiny] [--seq-lengths 1024,4096] [--steps 5] [--out bench/results/attention.json]

For each sequence length, each spec runs in its own child process (so peak memory is its own): the
real GPTModel on one packed bin of the bundled demo data, forward + backward with the T3S loss hook,
median step time, and the peak memory above the built model (CUDA: max_memory_allocated; CPU: peak
RSS). The local spec materialises [b, heads, s, s] scores, its softmax and the block mask, so its
memory grows with s^2; sdpa attends example by example through torch's scaled_dot_product_attention.
Reported: sdpa / local ratios of step time and of that memory, per sequence length.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_data import demo_packed  # noqa: E402
from machine import machine_info  # noqa: E402

from t3s_nemo.io import atomic_write_json  # noqa: E402


def child(spec: str, preset: str, seq_length: int, steps: int) -> dict:
    from t3s_nemo.config import Config  # first: it quiets megatron-core's import-time warnings

    import psutil
    import torch

    from t3s_nemo.data.dataset import PackedBins, collate
    from t3s_nemo.data.packed import PackedDataset
    from t3s_nemo.training.distributed import init_distributed, init_model_parallel
    from t3s_nemo.training.loss import batch_to_model_inputs, masked_token_loss
    from t3s_nemo.training.setup import build_model, vocab_rows

    packed = PackedDataset(demo_packed(seq_length))
    init_distributed()
    cfg = Config()
    cfg.model.preset = preset
    cfg.model.spec = spec
    init_model_parallel(cfg.parallel)
    bundle = build_model(cfg, vocab_rows(packed.vocab_size, cfg.parallel.tp), packed.seq_length)
    model = bundle.chunks[0]
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in collate([PackedBins(packed)[0]]).items()}
    inputs = batch_to_model_inputs(batch, bundle.packed_thd)
    cuda = device.type == "cuda"

    def step() -> float:
        t0 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        loss_sum, count, _ = masked_token_loss(model(**inputs), batch["loss_weight"])
        (loss_sum / count.clamp(min=1)).backward()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = psutil.Process().memory_info().rss
    step()  # warm-up
    times = [step() for _ in range(steps)]
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"median_step_s": statistics.median(times), "peak_memory_above_model_gib": max(peak - base, 0) / 2**30,
            "examples_in_bin": len(packed.read_bin(0)["tokens"]), "device": device.type}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--seq-lengths", default="1024,4096", help="comma-separated")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per spec and length (after one warm-up)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "attention.json"))
    ap.add_argument("--child", nargs=2, metavar=("SPEC", "SEQ"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print("RESULT " + json.dumps(child(a.child[0], a.preset, int(a.child[1]), a.steps)))
        return
    if a.steps < 1:
        ap.error("--steps: at least 1")
    try:
        lengths = [int(s) for s in a.seq_lengths.split(",")]
    except ValueError:
        ap.error(f"--seq-lengths: expected comma-separated integers, got {a.seq_lengths!r}")
    rows = []
    for s in lengths:
        row = {"seq_length": s}
        for spec in ("local", "sdpa"):
            p = subprocess.run([sys.executable, __file__, "--preset", a.preset, "--steps", str(a.steps),
                                "--child", spec, str(s)], capture_output=True, text=True)
            if p.returncode != 0 or "RESULT " not in p.stdout:
                sys.exit(f"bench/attention.py: the {spec} run at seq_length {s} failed:\n{p.stderr[-3000:]}")
            row[spec] = json.loads(p.stdout.rsplit("RESULT ", 1)[1].splitlines()[0])
        row["sdpa_over_local_step"] = row["sdpa"]["median_step_s"] / row["local"]["median_step_s"]
        local_mem = row["local"]["peak_memory_above_model_gib"]
        row["sdpa_over_local_memory"] = row["sdpa"]["peak_memory_above_model_gib"] / local_mem if local_mem else None
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("seq_length", "sdpa_over_local_step", "sdpa_over_local_memory")}))
    result = {"benchmark": "attention", "preset": a.preset, "steps": a.steps, "by_seq_length": rows,
              "machine": machine_info()}
    atomic_write_json(a.out, result)  # the result file appears whole or not at all


if __name__ == "__main__":
    main()
