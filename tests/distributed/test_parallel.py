"""TP=2, PP=2 and DP=2 (torchrun, 2 gloo processes) against one process on identical data."""

import sys

import pytest
import torch

from procs import run, train

STEPS = ("train.steps=3", "train.global_batch_size=4", "train.micro_batch_size=1", "train.warmup_steps=0",
         "train.lr=3e-3", "checkpoint.snapshot_interval=3")


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    records = train(run_dir, tiny_data, *STEPS, "checkpoint.snapshot_step0=true")
    return run_dir, records


def consolidated(ckpt, out):
    run([sys.executable, "-m", "t3s_nemo.checkpoint.consolidate", str(ckpt), str(out)])
    return torch.load(out, weights_only=True)


@pytest.mark.parametrize("layout", [["parallel.tp=2"], ["parallel.pp=2"], []], ids=["tp2", "pp2", "dp2"])
def test_layout_matches_single_process(layout, reference, tiny_data, tmp_path):
    ref_dir, ref = reference
    records = train(tmp_path / "run", tiny_data, *STEPS, "checkpoint.snapshot_step0=false",
                    f"model.init={ref_dir / 'snapshots' / 'step_0'}", *layout, nproc=2)
    assert [r["step"] for r in records] == [1, 2, 3]
    for a, b in zip(records, ref):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        assert a["trained_tokens"] == b["trained_tokens"]
    mine = consolidated(tmp_path / "run" / "snapshots" / "step_3", tmp_path / "mine.pt")
    theirs = consolidated(ref_dir / "snapshots" / "step_3", tmp_path / "ref.pt")
    start = consolidated(ref_dir / "snapshots" / "step_0", tmp_path / "start.pt")
    assert mine.keys() == theirs.keys()
    for k in mine:
        assert not torch.equal(theirs[k], start[k]) or "norm" in k  # the step really moved the weights
        torch.testing.assert_close(mine[k], theirs[k], rtol=1e-4, atol=1e-5, msg=k)
    if layout:  # export straight from the TP=2 / PP=2 snapshot: transformers loads it, same logits
        run([sys.executable, "-m", "t3s_nemo.model.hf", "export", str(tmp_path / "run" / "snapshots" / "step_3"),
             str(tmp_path / "hf")])
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
        ids = torch.arange(1, 40).unsqueeze(0)
        ref_hf = tmp_path / "ref_hf"
        run([sys.executable, "-m", "t3s_nemo.model.hf", "export", str(ref_dir / "snapshots" / "step_3"), str(ref_hf)])
        ref_model = AutoModelForCausalLM.from_pretrained(ref_hf, dtype=torch.float32)
        with torch.no_grad():
            torch.testing.assert_close(hf(ids).logits, ref_model(ids).logits, rtol=1e-4, atol=1e-4)


def test_context_parallel_needs_transformer_engine_on_cpu(tiny_data, tmp_path):
    import subprocess

    from procs import TINY, env

    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                        "-m", "t3s_nemo.recipes.train", str(TINY), f"run_dir={tmp_path / 'run'}",
                        f"data.path={tiny_data}", "parallel.cp=2"], capture_output=True, text=True, env=env(),
                       timeout=300)
    assert p.returncode != 0
    assert "context parallelism needs Transformer Engine" in p.stdout + p.stderr
