"""Per-token log p from recipes/profile.py against transformers on the exported checkpoint. Prints JSON."""

import json
import sys
from pathlib import Path

import numpy as np
import torch


def main():
    from transformers import AutoModelForCausalLM

    from t3s_nemo.data.packed import PackedDataset

    data, hf_dir, npz = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    ds = PackedDataset(data)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    got = np.load(npz)
    diffs, lengths_ok = [], True
    for i in range(0, ds.num_examples, max(1, ds.num_examples // 6)):
        ids = torch.as_tensor(ds.read_example(i), dtype=torch.long).unsqueeze(0)
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits.float(), -1)[0]
        p = int(ds.prompt_lengths[i])
        ref = logp[p - 1 : -1].gather(-1, ids[0, p:].unsqueeze(-1)).squeeze(-1).numpy()
        mine = got[ds.ids[i]]
        lengths_ok &= len(mine) == len(ref) == int(ds.sequence_lengths[i]) - p
        diffs.append(float(np.abs(mine - ref).max()))
    print("RESULT " + json.dumps({"max_abs_diff": max(diffs), "examples": len(diffs), "lengths_ok": bool(lengths_ok)}))


if __name__ == "__main__":
    main()
