"""Per-token log p of every response token under one or two checkpoints, forward only. Every rank runs it.

    torchrun --nproc-per-node N -m t3s_nemo.recipes.profile --data DIR --checkpoint A [--checkpoint-b B]
        --out OUT_DIR [parallel.tp=2 ...]

Writes OUT_DIR/logp_a.npz (and logp_b.npz, delta.npz = logp_b - logp_a with --checkpoint-b): one
float32 array per example id, one value per response token (the format `t3s data add-channel --span
response` reads). Uses the training engine's packing, model and parallel layout, with no gradients
and no optimizer state.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from t3s_nemo.console import console, exit_on_user_error, progress
from t3s_nemo.errors import T3SError


def parse_args(argv):
    p = argparse.ArgumentParser(prog="t3s_nemo.recipes.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--checkpoint-b")
    p.add_argument("--out", required=True)
    p.add_argument("--micro-batch-size", type=int, default=4)
    p.add_argument("overrides", nargs="*", help="parallel.tp=.. parallel.pp=.. model.spec=..")
    return p.parse_args(argv)


def response_logp(packed, bins_batch: dict, logp: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-example response-token log p from a micro-batch's per-position log p of the next token."""
    out = {}
    lp = logp.detach().float().cpu().numpy()
    for row, b in enumerate(bins_batch["bin_index"].tolist()):
        off = 0
        for i in packed.bin_range(b):
            n = int(packed.sequence_lengths[i])
            p = int(packed.prompt_lengths[i])
            # position t predicts token t+1: response tokens p..n-1 are predicted at positions p-1..n-2
            out[packed.ids[i]] = lp[row, off + p - 1 : off + n - 1].astype(np.float32)
            off += n
    return out


def main(argv=None) -> None:
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from t3s_nemo.checkpoint import weights as W
    from t3s_nemo.checkpoint.consolidate import run_config
    from t3s_nemo.data.dataset import PackedBins, collate
    from t3s_nemo.data.packed import PackedDataset
    from t3s_nemo.training.distributed import init_distributed, init_model_parallel, shutdown
    from t3s_nemo.training.loss import batch_to_model_inputs, schedule_shape
    from t3s_nemo.training.setup import build_model
    from t3s_nemo.trajectory.profile import require_ar

    a = parse_args(sys.argv[1:] if argv is None else argv)
    env = init_distributed()
    packed = PackedDataset(a.data)
    marker_a = W.read_marker(a.checkpoint)
    markers = [marker_a] + ([W.read_marker(a.checkpoint_b)] if a.checkpoint_b else [])
    for path, m in zip([a.checkpoint, a.checkpoint_b], markers):
        require_ar(path, m)
        if m.get("tokenizer_fingerprint") and m["tokenizer_fingerprint"] != packed.fingerprint:
            raise T3SError(f"{path}: selector uses another tokenizer ({m['tokenizer_fingerprint']}) than the "
                           f"dataset ({packed.fingerprint}); a selector must share the student's tokenizer")
    cfg = run_config(marker_a, a.overrides)
    p = cfg.parallel
    if p.cp > 1:  # per-token outputs are written from whole micro-batches
        raise T3SError("t3s profile runs without context parallelism: set parallel.cp=1 and split the model "
                       "with parallel.tp / parallel.pp instead")
    if env.world_size % (p.tp * p.pp * p.cp):
        raise T3SError(f"parallel.tp*pp*cp = {p.tp * p.pp * p.cp} does not divide the world size {env.world_size}")
    init_model_parallel(cfg.parallel)
    dp = ps.get_data_parallel_world_size()
    dp_rank = ps.get_data_parallel_rank()
    bundle = build_model(cfg, marker_a["padded_vocab_size"], packed.seq_length)
    for m in bundle.chunks:
        m.eval()
    bins = PackedBins(packed)
    mine = list(range(dp_rank, len(bins), dp))
    mbs = a.micro_batch_size
    starts = range(0, len(mine), mbs)  # micro-batches are collated as they are needed: a million bins
    # collated at once would hold ~1.5 MB each at 32k tokens in host memory, on every rank
    writer = ps.is_pipeline_last_stage(ignore_virtual=True) and ps.get_tensor_model_parallel_rank() == 0
    out_dir = Path(a.out)
    if env.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        console.print(f"profile: {len(bins)} bins of {packed.seq_length} tokens at {len(markers)} checkpoint(s), "
                      f"tp={p.tp} pp={p.pp} dp={dp}, micro-batches of {mbs}, {bundle.dtype}")
    fb = get_forward_backward_func()
    results = []
    seconds = 0.0
    for label, path in zip(("a", "b"), [a.checkpoint, a.checkpoint_b][: len(markers)]):
        W.load_weights(bundle.chunks, path, expect_vocab=bundle.vocab_size)
        collected: dict[str, np.ndarray] = {}

        def forward_step(data_iterator, model):
            batch = next(data_iterator)
            output = model(**batch_to_model_inputs(batch, bundle.packed_thd))

            def keep(per_token_loss):
                collected.update(response_logp(packed, batch, -per_token_loss.view(batch["tokens"].shape)))
                zero = per_token_loss.sum() * 0
                return zero, torch.tensor(1, dtype=torch.int), {}

            return output, keep

        bar = progress()
        if env.is_main:
            bar.start()
        task = bar.add_task(f"log p @ {Path(path).name}", total=len(starts))
        t0 = time.perf_counter()
        with torch.no_grad():
            for i in starts:
                batch = collate([bins[b] for b in mine[i : i + mbs]])
                fb(forward_step_func=forward_step, data_iterator=iter([batch]), model=bundle.chunks,
                   num_microbatches=1, forward_only=True,
                   **schedule_shape(bundle.packed_thd, packed.seq_length, len(batch["tokens"])))
                bar.advance(task)
        seconds += time.perf_counter() - t0
        bar.stop()
        results.append(collected)

    # every writer rank saves its part; rank 0 merges them into one file per quantity
    if writer:
        for label, res in zip("ab", results):
            np.savez(out_dir / f".part_{label}_{dp_rank}.npz", **res)
    dist.barrier()
    if env.is_main:
        merged = []
        for label in "ab"[: len(results)]:
            parts = {}
            for r in range(dp):
                with np.load(out_dir / f".part_{label}_{r}.npz") as f:
                    parts.update({k: f[k] for k in f.files})
                (out_dir / f".part_{label}_{r}.npz").unlink()
            merged.append(parts)
        _save_npz(out_dir / "logp_a.npz", merged[0])
        if len(merged) == 2:
            _save_npz(out_dir / "logp_b.npz", merged[1])
            _save_npz(out_dir / "delta.npz", {k: merged[1][k] - merged[0][k] for k in merged[0]})
        console.print(f"profiled {len(merged[0])} examples at {len(merged)} checkpoint(s): "
                      f"{packed.num_tokens * len(merged) / max(seconds, 1e-9):,.0f} tokens/s "
                      f"-> {out_dir}")
    dist.barrier()
    shutdown()


def _save_npz(path: Path, arrays: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def cli_main() -> None:
    exit_on_user_error(main)


if __name__ == "__main__":
    cli_main()
