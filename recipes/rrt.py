"""RRT, theta_0 + (theta_f - theta_b), shard by shard: every rank loads only its shard of the three
checkpoints (dist_checkpointing reshards from whatever layout they were saved at) and saves its shard.

    torchrun --nproc-per-node N -m t3s_nemo.recipes.rrt --base A --bottleneck B --final F --out OUT [parallel.tp=.. parallel.pp=..]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from t3s_nemo.console import console, exit_on_user_error
from t3s_nemo.errors import T3SError


def main(argv=None) -> None:
    from t3s_nemo.checkpoint import weights as W
    from t3s_nemo.checkpoint.consolidate import config_for
    from t3s_nemo.config import replace
    from t3s_nemo.io import check_replaceable
    from t3s_nemo.training.distributed import init_distributed, init_model_parallel, shutdown
    from t3s_nemo.training.setup import build_model

    p = argparse.ArgumentParser(prog="t3s_nemo.recipes.rrt", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("--base", "--bottleneck", "--final", "--out"):
        p.add_argument(name, required=True)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    env = init_distributed()
    out = Path(a.out)
    check_replaceable(out, [a.base, a.bottleneck, a.final], a.overwrite)
    markers = [W.read_marker(x) for x in (a.base, a.bottleneck, a.final)]
    if len({str(m.get("shape")) for m in markers}) != 1 or len({m.get("padded_vocab_size") for m in markers}) != 1:
        raise T3SError("rrt: theta_0, theta_b and theta_f must be checkpoints of the same model")
    cfg = config_for(markers[2])
    cfg.train.precision = "auto"
    if a.overrides:
        cfg = replace(cfg, dict(o.split("=", 1) for o in a.overrides))
    init_model_parallel(cfg.parallel)
    bundle = build_model(cfg, markers[2]["padded_vocab_size"], 128)
    # one fp32 accumulator besides the model (a 32B shard set is 131 GB in fp32): -theta_b, then
    # + theta_f, then theta_0 + it, in the order b0 + (bf - bb) is computed in, so the result is the same
    params = [p for c in bundle.chunks for p in c.parameters()]
    with torch.no_grad():
        W.load_weights(bundle.chunks, a.bottleneck)
        acc = [-p.detach().float() for p in params]
        W.load_weights(bundle.chunks, a.final)
        for d, p in zip(acc, params):
            d.add_(p.detach().float())
        # buffers (an MoE router's expert_bias) are theta_f's, as the parameters' residual is: kept aside
        buffers = [b.detach().clone() for c in bundle.chunks for b in c.buffers()]
        W.load_weights(bundle.chunks, a.base)
        for d, p in zip(acc, params):
            p.copy_((p.detach().float() + d).to(p.dtype))
        for saved, b in zip(buffers, [b for c in bundle.chunks for b in c.buffers()]):
            b.copy_(saved)
        del acc, buffers
    marker = dict({k: v for k, v in markers[2].items() if k != "saved_layout"}, kind=W.KIND_WEIGHTS,
                  rrt={"base": a.base, "bottleneck": a.bottleneck, "final": a.final,
                       "bottleneck_step": markers[1].get("step"), "final_step": markers[2].get("step")})
    tmp = out.with_name(f".{out.name}.tmp")
    W.save_weights(bundle.chunks, tmp, marker)
    if env.is_main:
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        console.print(f"wrote {out}")
    dist.barrier()
    shutdown()


def cli_main() -> None:
    exit_on_user_error(main)


if __name__ == "__main__":
    cli_main()
