"""Anchor/other gradient norms and cosine of recipes/analyze.py against transformers on the exported snapshot.

argv: DATA HF_DIR GRADIENTS_JSON ROW. Prints RESULT {...} with both sets of numbers.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch


def main():
    from transformers import AutoModelForCausalLM

    from t3s_nemo.data.packed import PackedDataset

    data, hf_dir, result = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(Path(sys.argv[3]).read_text())
    row = result["rows"][int(sys.argv[4])]
    ds = PackedDataset(data)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float64)
    examples = [i for b in result["bins"] for i in ds.bin_range(b)]
    groups = []
    for i in examples:
        ids = torch.as_tensor(ds.read_example(i), dtype=torch.long)
        p = int(ds.prompt_lengths[i])
        delta = torch.as_tensor(ds.read_example(i, "delta")[p:].astype(np.float64))
        groups.append((ids, p, delta > 0))
    total = sum(len(d) for _, _, d in groups)

    def grad(anchor: bool):
        model.zero_grad()
        for ids, p, is_anchor in groups:
            logits = model(ids.unsqueeze(0)).logits[0]
            ce = torch.nn.functional.cross_entropy(logits[p - 1 : -1], ids[p:], reduction="none")
            sel = is_anchor if anchor else ~is_anchor
            (ce[sel].sum() / total).backward()
        return torch.cat([q.grad.flatten() for q in model.parameters() if q.grad is not None])

    ga, go = grad(True), grad(False)
    ref = {"anchor_grad_norm": float(ga.norm()), "other_grad_norm": float(go.norm()),
           "cosine": float(ga @ go / (ga.norm() * go.norm())),
           "anchor_tokens": int(sum(int(d.sum()) for _, _, d in groups)), "response_tokens": total}
    print("RESULT " + json.dumps({"ref": ref, "got": row, "anchor_tokens": result["anchor_tokens"],
                                  "response_tokens": result["response_tokens"]}))


if __name__ == "__main__":
    main()
