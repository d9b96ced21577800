"""`t3s rrt`: Recovering Residual Transfer, theta_0 + (theta_f - theta_b), the parameter-space baseline."""

from __future__ import annotations

from pathlib import Path

import torch

from t3s_nemo.checkpoint import weights as W
from t3s_nemo.errors import T3SError


def rrt(base: Path, bottleneck: Path, final: Path, out: Path, overwrite: bool = False) -> Path:
    """Write theta_0 + (theta_f - theta_b) as a t3s weights checkpoint (any saved layouts; one process).

    Tensor by tensor in fp32, holding the three models in host memory.
    """
    import shutil

    from t3s_nemo.checkpoint.consolidate import config_for, load_full_state_dict
    from t3s_nemo.training.setup import build_model

    out = Path(out)
    if out.exists() and not overwrite:
        raise T3SError(f"{out}: output exists (pass --overwrite to replace it)")
    s0, m0, shape0 = load_full_state_dict(base)
    sb, mb, shape_b = load_full_state_dict(bottleneck)
    sf, mf, shape_f = load_full_state_dict(final)
    if not (shape0 == shape_b == shape_f) or not (s0.keys() == sb.keys() == sf.keys()):
        raise T3SError("rrt: theta_0, theta_b and theta_f must be checkpoints of the same model")
    bundle = build_model(config_for(mf), mf["padded_vocab_size"], 128)
    model = bundle.chunks[0]
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(s0[name].float() + (sf[name].float() - sb[name].float()))
    marker = dict({k: v for k, v in mf.items() if k != "saved_layout"}, kind=W.KIND_WEIGHTS, rrt={"base": str(base), "bottleneck": str(bottleneck), "final": str(final),
                                                 "bottleneck_step": mb.get("step"), "final_step": mf.get("step")})
    tmp = out.with_name(f".{out.name}.tmp")
    W.save_weights(bundle.chunks, tmp, marker)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out
