"""On a CUDA machine: the attention specs, bf16 training and long-context memory (skipped without CUDA).

Run them with `python -m pytest -m gpu tests/distributed/test_gpu.py`. Transformer Engine is used where it
imports (the te spec joins the comparison); without it the sdpa spec is the default.
"""

import json
import subprocess
import sys

import pytest

from procs import REPO, env, run_script, train

pytestmark = pytest.mark.gpu


def _te() -> bool:
    from t3s_nemo.devices import te_available

    return te_available()


def test_attention_specs_agree_on_gpu(tiny_data):
    variants = ("te," if _te() else "") + "sdpa_thd,sdpa,local"
    r = run_script("model_checks.py", tiny_data, variants)
    assert r["device"] == "cuda"
    for v in variants.split(","):
        assert r[v]["packed_vs_unpacked_max_abs_diff"] < 1e-4, v
        assert r[v]["masked_labels_grad_diff"] < 1e-6, v  # GPU attention backward kernels may use atomics
        assert r[v]["all_masked_grads_finite"] and r[v]["all_masked_grad_max"] == 0.0, v
        assert r[v]["bidirectional_other_examples_diff"] < 1e-6, v
        if v != "local":
            assert r[f"{v}_vs_local_loss_diff"] < 1e-4, v
            assert r[f"{v}_vs_local_grad_diff"] < 1e-4, v


def test_bf16_sft_learns_on_gpu(tmp_path, tiny_data):
    traj = train(tmp_path / "run", tiny_data, "train.steps=12")  # train.precision=auto: bf16 on CUDA
    losses = [r["loss"] for r in traj]
    assert len(losses) == 12 and all(x == x for x in losses)
    assert losses[-1] < losses[0]
    assert traj[-1]["tokens_per_s"] > 0 and traj[-1]["mfu"] is not None  # H100/H200/A100: peak FLOP/s known


def test_sdpa_attention_memory_is_not_quadratic_on_gpu():
    """16k-token bins: the sdpa spec's activations stay below one [heads, s, s] bf16 score matrix, which
    megatron-core's local attention materialises (several times) per layer."""
    s = 16384
    p = subprocess.run([sys.executable, str(REPO / "bench" / "attention.py"), "--steps", "1", "--child", "sdpa", str(s)],
                       capture_output=True, text=True, env=env(), timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.rsplit("RESULT ", 1)[1].splitlines()[0])
    heads = 4  # the tiny preset
    assert r["device"] == "cuda"
    assert r["peak_memory_above_model_gib"] < heads * s * s * 2 / 2**30
