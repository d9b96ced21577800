"""The tiny dLLM (masked diffusion) on the real engine: trains from the CLI and its loss decreases, TP=2
and CP=2 (torchrun, 2 gloo processes) give the single process's per-step losses, attention is
bidirectional, the block-wise remasking sampler fills every masked position and counts tokens."""

import json
import shutil
import sys

import numpy as np
import pytest

from procs import TINY, run, run_script, t3s, train

# constant LR and no warm-up: the first 3 steps of the 10-step run are the 3-step TP=2 run's steps
STEPS = ("model.objective=dllm", "train.global_batch_size=4", "train.micro_batch_size=1", "train.warmup_steps=0",
         "train.lr=3e-3", "train.lr_decay=constant", "mask.channel=dllm_targets", "train.log_interval=1")


@pytest.fixture(scope="module")
def dllm_data(tiny_data, tmp_path_factory):
    """tiny_data plus a targets channel (as `t3s mask --rule dllm` writes): every other response token."""
    from t3s_nemo.data.packed import PackedDataset

    out = tmp_path_factory.mktemp("dllm") / "packed"
    shutil.copytree(tiny_data, out)
    ds = PackedDataset(out)
    values = {eid: (np.arange(len(ds.read_example(i)) - int(ds.prompt_lengths[i])) % 2 == 0).astype(np.uint8)
              for i, eid in enumerate(ds.ids)}
    ds.add_channel("dllm_targets", values, "uint8", span="response")
    return out


@pytest.fixture(scope="module")
def single(dllm_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("single") / "run"
    run([*t3s(), "sft", str(TINY), f"run_dir={run_dir}", f"data.path={dllm_data}", "train.steps=10",
         "train.tensorboard=false", "checkpoint.snapshot_interval=5", "checkpoint.snapshot_step0=true", *STEPS])
    records = [json.loads(line) for line in (run_dir / "trajectory.jsonl").read_text().splitlines()]
    return run_dir, records


def test_tiny_dllm_trains_from_the_cli(single, dllm_data):
    from t3s_nemo.data.packed import PackedDataset

    run_dir, records = single
    assert [r["step"] for r in records] == list(range(1, 11))
    losses = [r["loss"] for r in records]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3, losses
    # the noise is random OR targets, and the targets are half the response tokens
    assert all(0.5 <= r["masked_fraction"] < 1.0 for r in records), [r["masked_fraction"] for r in records]
    # the demo tokenizer has no mask token: one extra id past its vocabulary, recorded for the sampler
    vocab = PackedDataset(dllm_data).vocab_size
    assert f"mask_token_id: {vocab}" in (run_dir / "config.yaml").read_text()
    marker = json.loads((run_dir / "checkpoints" / "iter_10" / "t3s.json").read_text())
    assert marker["objective"] == "dllm" and marker["mask_token_id"] == vocab


@pytest.mark.parametrize("layout", ["parallel.tp=2", "parallel.cp=2"], ids=["tp2", "cp2"])
def test_layout_matches_single_process(layout, single, dllm_data, tmp_path):
    """TP=2, and CP=2 (bidirectional attention over all-gathered keys; noise drawn per example before
    the split), give the single process's losses."""
    _, ref = single
    records = train(tmp_path / "run", dllm_data, "train.steps=3", *STEPS, layout, nproc=2)
    assert [r["step"] for r in records] == [1, 2, 3]
    for a, b in zip(records, ref[:3]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["masked_fraction"] == b["masked_fraction"]  # the same noise on both ranks and layouts


@pytest.fixture(scope="module")
def checks(tiny_data):
    """One subprocess with a real bidirectional GPTModel (random init): attention and sampler checks."""
    return run_script("dllm_checks.py", tiny_data)


def test_attention_is_bidirectional_within_an_example_only(checks):
    r = checks
    # changing the last token of example 0 changes the logits of every earlier position of example 0 ...
    assert r["example0_first_position_change"] > 1e-5
    assert r["example0_earlier_positions_changed"] == r["example0_earlier_positions"]
    # ... and nothing of the next example packed in the same bin
    assert r["example1_max_change"] == 0.0


def test_sampler_fills_the_answer_and_counts_tokens(checks):
    r = checks
    assert r["sample_len"] == 16 and r["sample_num_tokens"] == 16  # no EOS: all gen_length tokens count
    assert not r["sample_has_mask"] and r["sample_max_id"] < r["vocab"]  # real tokens only
    assert r["sample_deterministic"] and r["sample_hot_differs"]  # greedy repeats; temperature 1 samples
    # with an EOS: the answer stops before it, and the count includes it (as for AR samples)
    assert r["eos_tokens"] == r["eos_first_index"] and r["eos_num_tokens"] == r["eos_first_index"] + 1
    assert r["eos_prefix_equal"]


def test_batched_sampler_gives_each_row_its_answer_alone(checks):
    """Prompts of three lengths in one batch, left-padded under a mask and packed as THD: each row's answer
    is the one it gets alone, greedy and at temperature 1 (its own seed), and the rows differ."""
    r = checks
    for t in ("0", "1"):
        assert r[f"batch_equal_t{t}_thd0"] and r[f"batch_equal_t{t}_thd1"]
        assert r[f"batch_rows_differ_t{t}"]
    # the block's logits in a batch are each row's own full forward pass's logits at those positions
    assert r["block_logits_max_diff_thd0"] < 1e-4 and r["block_logits_max_diff_thd1"] < 1e-4


def test_batched_sampler_stops_rows_at_eos(checks):
    """Rows whose EOS is in the first of two blocks stop there (4 forward passes, not 8), same answers."""
    r = checks
    assert r["eos_batch_rows"]
    assert r["eos_calls"] == 4 and r["full_calls"] == 8


def test_megatron_backend_samples_a_dllm_checkpoint(single, dllm_data, tmp_path):
    """generation.backend=megatron's recipe on the trained dLLM: remasking sampler, marker's mask id, TP=2."""
    from t3s_nemo.data.packed import PackedDataset

    run_dir, _ = single
    ds = PackedDataset(dllm_data)
    prompts = [ds.read_example(i)[: int(ds.prompt_lengths[i])].tolist() for i in range(2)]
    (tmp_path / "p.json").write_text(json.dumps(prompts))
    args = [sys.executable, "-m", "t3s_nemo.recipes.sample", "--checkpoint", str(run_dir / "checkpoints" / "iter_10"),
            "--prompts", str(tmp_path / "p.json"), "--eos", str(ds.eos_id), "--num-samples", "2",
            "--max-new-tokens", "12", "--temperature", "0", "--dllm-block-length", "8", "--dllm-steps-per-block", "4"]
    run([*args, "--out", str(tmp_path / "o.json")])
    out = json.loads((tmp_path / "o.json").read_text())
    samples = [s for ss in out["samples"] for s in ss]
    assert [len(ss) for ss in out["samples"]] == [2, 2]
    assert all(0 < len(s) <= 12 and all(0 <= t < ds.vocab_size for t in s) for s in samples)  # no mask id
    assert all(ds.eos_id not in s[:-1] for s in samples)  # a sample ends at its first eos
    assert out["generated_tokens"] == sum(len(s) for s in samples)
    assert out["samples"][0][0] == out["samples"][0][1]  # greedy: both samples agree
    # TP=2 (torchrun, 2 gloo processes): the same greedy samples
    run([sys.executable, "-m", "t3s_nemo.launch", "--standalone", "--nproc-per-node=2", "-m", "t3s_nemo.recipes.sample",
         *args[3:], "--out", str(tmp_path / "tp2.json"), "parallel.tp=2"])
    assert json.loads((tmp_path / "tp2.json").read_text())["samples"] == out["samples"]


def test_bottleneck_stage_samples_a_dllm_run_with_the_remasking_sampler(single, tmp_path):
    """`t3s bottleneck` on a dLLM trajectory: auto picks the megatron backend, every snapshot is evaluated."""
    import subprocess

    from procs import env

    run_dir, _ = single
    args = [*t3s(), "bottleneck", str(run_dir), "bottleneck.num_prompts=2", "generation.n=1",
            "generation.max_new_tokens=8", "generation.temperature=0", "--force"]
    # transformers cannot load a dLLM: one clear error before any work, no traceback
    p = subprocess.run([*args, "generation.backend=transformers"], capture_output=True, text=True, env=env(), timeout=300)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "a dLLM (model.objective=dllm) is sampled with its remasking sampler" in p.stdout + p.stderr
    assert not (run_dir / "bottleneck.json").exists()
    run(args)
    summary = json.loads((run_dir / "bottleneck.json").read_text())
    assert summary["generation"]["backend"] == "megatron"
    assert [s["step"] for s in summary["snapshots"]] == [0, 5, 10]
    assert all(0 < s["mean_tokens"] <= 8 and 0.0 <= s["accuracy"] <= 1.0 for s in summary["snapshots"])
    assert summary["bottleneck_step"] in (5, 10)
