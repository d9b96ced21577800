"""generation.backend=megatron: sample straight from a t3s checkpoint with megatron-core's inference engine.

The checkpoint loads at any saved layout into `generation.tp` tensor-parallel ranks (recipes/sample.py,
under torchrun when tp > 1), megatron-core's static inference engine keeps the KV cache, and no Hugging
Face export is written. The sampler runs in a child process, like the training and profile recipes, so
that its process groups and memory end with it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

from t3s_nemo.errors import T3SError
from t3s_nemo.trajectory.bottleneck import _LAUNCH_ENV  # the child starts its own world



def sample_checkpoint(checkpoint: Path, prompts: list[list[int]], n: int, temperature: float, top_p: float,
                      max_new_tokens: int, seed: int, batch_size: int, tp: int = 1,
                      tokenizer_dir: Optional[Path] = None):
    """n samples per prompt from a t3s checkpoint (result[i][k] = Sample k of prompt i)."""
    from t3s_nemo.checkpoint import weights as W
    from t3s_nemo.data.tokenizer import load_tokenizer, stop_token_ids
    from t3s_nemo.trajectory.generate import _sample

    checkpoint = Path(checkpoint)
    if not W.is_complete(checkpoint):
        raise T3SError(f"{checkpoint}: generation.backend=megatron samples from a complete t3s checkpoint "
                       "(a snapshot or checkpoint directory with t3s.json)")
    marker = W.read_marker(checkpoint)
    tok = load_tokenizer(tokenizer_dir or marker.get("tokenizer", ""))
    stops = stop_token_ids(tok)
    eos = stops[-1]  # the end of turn the student learned (eos when it is that); it pads and ends dLLM samples
    with tempfile.TemporaryDirectory(prefix="t3s-sample-") as work:
        prompts_file, out_file = Path(work) / "prompts.json", Path(work) / "samples.json"
        prompts_file.write_text(json.dumps(prompts))
        launcher = [sys.executable]
        if tp > 1:
            launcher += ["-m", "t3s_nemo.launch", "--standalone", f"--nproc-per-node={tp}"]
        cmd = [*launcher, "-m", "t3s_nemo.recipes.sample", "--checkpoint", str(checkpoint),
               "--prompts", str(prompts_file), "--out", str(out_file), "--eos", str(eos),
               "--also-stop", *map(str, stops), "--num-samples", str(n), "--temperature", str(temperature), "--top-p", str(top_p), "--max-new-tokens", str(max_new_tokens),
               "--seed", str(seed), "--batch-size", str(batch_size), f"parallel.tp={tp}"]
        env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_ENV}
        env["TQDM_DISABLE"] = "1"  # megatron-core's engine draws its own bar; the caller shows progress
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if p.returncode != 0 or not out_file.is_file():
            lines = [ln.strip() for ln in (p.stderr + "\n" + p.stdout).splitlines() if ln.strip()]
            errors = [ln for ln in lines if ln.lower().startswith("error") or "Error" in ln]
            last = (errors or lines or ["no output"])[-1]
            raise T3SError(f"{checkpoint}: megatron sampling failed: {last.removeprefix('error:').strip()}")
        result = json.loads(out_file.read_text())
    return [[_sample(tok, ids, stops) for ids in ss] for ss in result["samples"]]
