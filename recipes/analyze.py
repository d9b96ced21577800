"""The paper's mechanism diagnostics on the training engine: gradient groups and loss transfer.

    torchrun --nproc-per-node TP -m t3s_nemo.recipes.analyze gradients --data DIR --checkpoint A
        [--checkpoint B ...] --out OUT.json [--num-bins 16] [parallel.tp=2]
    torchrun --nproc-per-node TP -m t3s_nemo.recipes.analyze transfer --data DIR --checkpoint A --out OUT.json
        [--lr 1e-3] [--groups 4] [--num-bins 16]

Both read the `delta` channel of a profiled dataset (`t3s profile RUN`).

gradients: for every checkpoint, the gradient of the SFT loss (mean cross-entropy over all response
tokens of a fixed batch) split into its two parts: the imitation anchors (delta > 0, the tokens T3S
masks) and the other response tokens. g = g_anchor + g_other. Reports both norms, their ratio and
cosine, and each group's mean loss (the paper: anchors' gradients about 17x the others' early, cosine
about -0.4 during the crash).

transfer: the loss-transfer matrix at one checkpoint. Response tokens are split into `--groups`
quantiles of delta (group 0 = lowest delta, the most yet-to-learn; the last = the anchors' end). For
each group i, one SGD step of size --lr on the mean loss of group i alone, from the checkpoint; entry
[i][j] = change of group j's mean loss on a *disjoint* batch (so it measures transfer, not memorising
the batch). Negative = the update on i helped j.

Runs at tensor parallelism (any tp dividing the heads) in one pipeline stage; every rank takes the
same batch. Squared norms and dot products are summed over TP shards, replicated parameters once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from t3s_nemo.console import console, exit_on_user_error, progress
from t3s_nemo.errors import T3SError


def parse_args(argv):
    p = argparse.ArgumentParser(prog="t3s_nemo.recipes.analyze", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=("gradients", "transfer"))
    p.add_argument("--data", required=True)
    p.add_argument("--checkpoint", action="append", required=True, help="repeat for several (gradients)")
    p.add_argument("--step", action="append", type=int, help="training step of each --checkpoint (labels)")
    p.add_argument("--out", required=True)
    p.add_argument("--num-bins", type=int, default=16, help="packed bins in the batch (and in the eval batch)")
    p.add_argument("--micro-batch-size", type=int, default=1,
                   help="bins per forward/backward (activations grow with it; the sums do not change)")
    p.add_argument("--lr", type=float, default=1e-3, help="transfer: SGD step size")
    p.add_argument("--groups", type=int, default=4, help="transfer: delta quantile groups")
    p.add_argument("--seed", type=int, default=0, help="which bins form the batch")
    p.add_argument("overrides", nargs="*", help="parallel.tp=.. model.spec=..")
    return p.parse_intermixed_args(argv)


def pick_bins(num_bins_total: int, n: int, seed: int) -> tuple[list[int], list[int]]:
    """Two disjoint, seeded sets of bins: the batch and (transfer) the evaluation batch."""
    order = np.random.default_rng(seed).permutation(num_bins_total).tolist()
    n = min(n, num_bins_total // 2 if num_bins_total > 1 else 1)
    return sorted(order[:n]), sorted(order[n : 2 * n])


def group_ids(delta: np.ndarray, response: np.ndarray, groups: int, edges: np.ndarray | None = None):
    """Per position: -1 outside the response, else the delta-quantile group 0..groups-1."""
    out = np.full(delta.shape, -1, dtype=np.int64)
    if edges is None:
        edges = np.quantile(delta[response > 0], np.linspace(0, 1, groups + 1)[1:-1])
    g = np.searchsorted(edges, delta, side="right")
    out[response > 0] = g[response > 0]
    return out, edges


class Engine:
    """The model on this rank, a fixed batch, and per-token losses / group gradients on it."""

    def __init__(self, a):
        from megatron.core import parallel_state as ps

        from t3s_nemo.checkpoint import weights as W
        from t3s_nemo.checkpoint.consolidate import run_config
        from t3s_nemo.data.packed import PackedDataset
        from t3s_nemo.training.distributed import init_distributed, init_model_parallel, one_kernel_queue_for_overlap
        from t3s_nemo.training.setup import build_model

        marker = W.read_marker(a.checkpoint[0])
        # full activation recomputation unless told otherwise: the gradients of a 32B student at 16k tokens
        # would keep ~70 GB of activations per GPU without it, beside two gradient copies. megatron
        # recomputes only in training mode, which changes nothing else here: the presets have no dropout,
        # and an MoE router would add its load-balancing loss to every gradient, so its coefficient is 0.
        cfg = run_config(marker, ["model.recompute=full", "model.moe_aux_loss_coeff=0", *a.overrides])
        one_kernel_queue_for_overlap(cfg.parallel)  # backward at TP > 1, as in training; before CUDA starts
        self.env = init_distributed()
        self.packed = PackedDataset(a.data)
        if "delta" not in self.packed.channels:
            raise T3SError(f"{a.data}: no 'delta' channel; run `t3s profile RUN` first")
        if cfg.parallel.pp != 1 or cfg.parallel.cp != 1:
            raise T3SError("t3s analyze runs in one pipeline stage without context parallelism "
                           "(parallel.pp=1 parallel.cp=1; use parallel.tp to split a large model)")
        if self.env.world_size != cfg.parallel.tp:
            raise T3SError(f"t3s analyze needs exactly parallel.tp={cfg.parallel.tp} processes "
                           f"(got {self.env.world_size}); every rank works on the same batch")
        init_model_parallel(cfg.parallel)
        self.tp_rank = ps.get_tensor_model_parallel_rank()
        self.tp_group = ps.get_tensor_model_parallel_group()
        self.bundle = build_model(cfg, marker["padded_vocab_size"], self.packed.seq_length)
        self.model = self.bundle.chunks[0]
        self.model.train()  # for the recomputation; Qwen3 has no dropout, so the losses are those of eval()
        self.W = W
        self.mbs = a.micro_batch_size

    def load(self, path: str) -> None:
        self.W.load_weights(self.bundle.chunks, path, expect_vocab=self.bundle.vocab_size)

    def batches(self, bins: list[int]) -> list[dict]:
        from t3s_nemo.data.dataset import PackedBins, collate

        ds = PackedBins(self.packed, value_channels=("delta",))
        return [collate([ds[b] for b in bins[i : i + self.mbs]]) for i in range(0, len(bins), self.mbs)]

    def per_token_loss(self, batch: dict) -> torch.Tensor:
        from t3s_nemo.training.loss import batch_to_model_inputs

        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        out = self.model(**batch_to_model_inputs(batch, self.bundle.packed_thd))
        return out.float().view(batch["tokens"].shape)

    def params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def counted(self, p: torch.nn.Parameter) -> bool:
        """Whether this rank's copy of p counts in norms: TP shards always, replicated params on TP rank 0."""
        from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate

        return param_is_not_tensor_parallel_duplicate(p) or self.tp_rank == 0

    def group_grads(self, batches: list[dict], weights: list[list[torch.Tensor]],
                    masks: Optional[list[tuple[torch.Tensor, ...]]] = None) -> tuple[list[list[torch.Tensor]], list[float]]:
        """Gradients of sum(w_k * ce) for each weight set k, as lists per parameter, and sum(ce[mask_j]) per mask j.

        One forward and backward per weight set: megatron's vocab-parallel cross entropy changes its saved
        tensors in its backward, so one graph cannot be walked twice. The masks' losses come from the
        first set's forward.
        """
        out = []
        sums = [0.0] * len(masks[0]) if masks else []
        for k in range(len(weights[0])):
            self.model.zero_grad(set_to_none=True)
            for i, (batch, w) in enumerate(zip(batches, weights)):
                ce = self.per_token_loss(batch)
                if masks and k == 0:
                    detached = ce.detach().cpu()
                    for j, m in enumerate(masks[i]):
                        sums[j] += float(detached[m].sum())
                (ce * w[k].to(ce.device)).sum().backward()
            out.append([p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in self.params()])
        self.model.zero_grad(set_to_none=True)
        return out, sums

    def dot(self, a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
        s = torch.zeros((), dtype=torch.float64)
        for p, x, y in zip(self.params(), a, b):
            if self.counted(p):
                s += (x.double() * y.double()).sum().cpu()
        if dist.get_world_size(self.tp_group) > 1:
            s = s.to(next(self.model.parameters()).device)
            dist.all_reduce(s, group=self.tp_group)
        return float(s)

    @torch.no_grad()
    def group_losses(self, batches: list[dict], groups: list[np.ndarray], n: int) -> list[float]:
        sums, counts = np.zeros(n), np.zeros(n)
        for batch, g in zip(batches, groups):
            ce = self.per_token_loss(batch).cpu().numpy()
            for j in range(n):
                sel = g == j
                sums[j] += ce[sel].sum()
                counts[j] += sel.sum()
        return (sums / np.maximum(counts, 1)).tolist()


def gradients(a, eng: Engine) -> dict:
    bins, _ = pick_bins(eng.packed.num_bins, a.num_bins, a.seed)
    batches = eng.batches(bins)
    masks = []
    total = 0.0
    for b in batches:
        resp = b["response_mask"] > 0
        anchor = resp & (b["value_delta"] > 0)
        masks.append((anchor, resp & ~anchor))
        total += float(resp.sum())
    anchors = sum(float(m[0].sum()) for m in masks)
    rows = []
    steps = a.step or list(range(len(a.checkpoint)))
    bar = progress()
    if eng.env.is_main:
        bar.start()
    task = bar.add_task("gradients per checkpoint", total=len(a.checkpoint))
    for step, path in zip(steps, a.checkpoint):
        eng.load(path)
        # each group's share of the SFT loss: sum over the group / all response tokens, so g = g_A + g_O
        weights = [[m[0].float() / total, m[1].float() / total] for m in masks]
        (g_a, g_o), (la, lo) = eng.group_grads(batches, weights, masks)
        aa, oo, ao = eng.dot(g_a, g_a), eng.dot(g_o, g_o), eng.dot(g_a, g_o)
        na, no = aa ** 0.5, oo ** 0.5
        rows.append({"step": step, "checkpoint": str(path), "anchor_grad_norm": na, "other_grad_norm": no,
                     "ratio": na / no if no > 0 else None,
                     "cosine": ao / (na * no) if na > 0 and no > 0 else None,
                     "anchor_loss": la / max(anchors, 1), "other_loss": lo / max(total - anchors, 1)})
        bar.advance(task)
    bar.stop()
    return {"kind": "gradients", "bins": bins, "response_tokens": int(total), "anchor_tokens": int(anchors),
            "anchor_fraction": anchors / max(total, 1), "rows": rows}


def transfer(a, eng: Engine) -> dict:
    n = a.groups
    bins, eval_bins = pick_bins(eng.packed.num_bins, a.num_bins, a.seed)
    if not eval_bins:
        raise T3SError(f"{a.data}: {eng.packed.num_bins} bin(s); the transfer matrix needs at least 2 "
                       "(one to update on, one to measure)")
    batches, eval_batches = eng.batches(bins), eng.batches(eval_bins)
    all_delta = np.concatenate([b["value_delta"].numpy()[b["response_mask"].numpy() > 0] for b in batches])
    edges = np.quantile(all_delta, np.linspace(0, 1, n + 1)[1:-1])
    groups = [group_ids(b["value_delta"].numpy(), b["response_mask"].numpy(), n, edges)[0] for b in batches]
    eval_groups = [group_ids(b["value_delta"].numpy(), b["response_mask"].numpy(), n, edges)[0] for b in eval_batches]
    counts = [int(sum((g == i).sum() for g in groups)) for i in range(n)]
    eng.load(a.checkpoint[0])
    base = eng.group_losses(eval_batches, eval_groups, n)
    weights = [[torch.from_numpy((g == i).astype(np.float32)) / max(counts[i], 1) for i in range(n)] for g in groups]
    grads, _ = eng.group_grads(batches, weights)
    matrix = []
    params = eng.params()
    bar = progress()
    if eng.env.is_main:
        bar.start()
    task = bar.add_task("one update per group", total=n)
    for i in range(n):
        with torch.no_grad():
            for p, g in zip(params, grads[i]):
                p.sub_(a.lr * g)
        after = eng.group_losses(eval_batches, eval_groups, n)
        matrix.append([x - y for x, y in zip(after, base)])
        with torch.no_grad():
            for p, g in zip(params, grads[i]):
                p.add_(a.lr * g)
        bar.advance(task)
    bar.stop()
    return {"kind": "transfer", "checkpoint": a.checkpoint[0], "lr": a.lr, "groups": n,
            "delta_edges": [float(e) for e in edges], "tokens_per_group": counts, "bins": bins,
            "eval_bins": eval_bins, "base_loss": base, "matrix": matrix,
            "grad_norms": [eng.dot(g, g) ** 0.5 for g in grads]}


def main(argv=None) -> None:
    from t3s_nemo.io import atomic_write_json
    from t3s_nemo.training.distributed import shutdown

    a = parse_args(sys.argv[1:] if argv is None else argv)
    if a.step and len(a.step) != len(a.checkpoint):
        raise T3SError(f"--step given {len(a.step)} time(s) for {len(a.checkpoint)} --checkpoint(s)")
    if a.kind == "transfer" and len(a.checkpoint) != 1:
        raise T3SError("transfer takes one --checkpoint")
    eng = Engine(a)
    torch.manual_seed(a.seed)
    result = gradients(a, eng) if a.kind == "gradients" else transfer(a, eng)
    if eng.env.is_main:
        atomic_write_json(Path(a.out), result)
        console.print(f"wrote {a.out}")
    dist.barrier()
    shutdown()


def cli_main() -> None:
    exit_on_user_error(main)


if __name__ == "__main__":
    cli_main()
