"""Profile (against transformers), masks (rules and baselines) and RRT on a real tiny trajectory."""

import json

import numpy as np
import pytest
import torch

from procs import REPO, run, run_script, t3s, t3s_here, train
from t3s_nemo.model.hf import export


@pytest.fixture(scope="module")
def trajectory(tiny_data, tmp_path_factory):
    """A 3-step trajectory run with a snapshot per step and theta_b chosen by hand (step 2)."""
    import shutil

    root = tmp_path_factory.mktemp("traj")
    data = root / "data"
    shutil.copytree(tiny_data, data)
    run_dir = root / "run"
    train(run_dir, data, "train.steps=3", "train.global_batch_size=2", "checkpoint.snapshot_interval=1")
    (run_dir / "bottleneck.json").write_text(json.dumps(
        {"bottleneck_step": 2, "bottleneck_dir": str(run_dir / "snapshots" / "step_2")}))
    return run_dir, data


def test_profile_matches_transformers_and_tp2(trajectory, tmp_path):
    run_dir, data = trajectory
    run([*t3s(), "profile", str(run_dir)])
    export(run_dir / "snapshots" / "step_2", tmp_path / "hf")
    r = run_script("profile_vs_hf.py", data, tmp_path / "hf", run_dir / "profile" / "logp_b.npz")
    assert r["lengths_ok"] and r["examples"] >= 5
    assert r["max_abs_diff"] < 1e-4
    # the same profile at TP=2 (standalone mode)
    run([*t3s(), "profile", "--data", str(data), "--checkpoint", str(run_dir / "snapshots" / "step_0"),
         "--checkpoint-b", str(run_dir / "snapshots" / "step_2"), "--out", str(tmp_path / "tp2"), "--tp", "2",
         "--nproc-per-node", "2"])
    one, two = np.load(run_dir / "profile" / "delta.npz"), np.load(tmp_path / "tp2" / "delta.npz")
    assert sorted(one.files) == sorted(two.files)
    assert max(float(np.abs(one[k] - two[k]).max()) for k in one.files) < 1e-4
    a, b = np.load(run_dir / "profile" / "logp_a.npz"), np.load(run_dir / "profile" / "logp_b.npz")
    assert all(np.allclose(one[k], b[k] - a[k]) for k in one.files)


def test_masks_follow_their_rules(trajectory):
    from t3s_nemo.data.packed import PackedDataset

    run_dir, data = trajectory
    if "delta" not in PackedDataset(data).channels:
        run([*t3s(), "profile", str(run_dir)])
    for rule in ("ar", "reverse", "static-confidence", "static-confidence-low", "random", "dllm"):
        t3s_here("mask", run_dir, "--rule", rule)  # the last command below runs `t3s mask` itself
    ds = PackedDataset(data)
    resp = lambda name: np.concatenate([ds.read_example(i, name)[ds.response_slice(i)] for i in range(ds.num_examples)])
    delta, logp0 = resp("delta"), resp("logp0")
    ar, rev = resp("t3s_mask"), resp("mask_reverse")
    static, rnd = resp("mask_static_confidence"), resp("mask_random")
    assert np.array_equal(ar, (delta <= 0).astype(np.uint8))
    assert np.array_equal(rev, 1 - ar)
    masked = int((ar == 0).sum())
    assert int((static == 0).sum()) == masked and int((rnd == 0).sum()) == masked
    low = resp("mask_static_confidence_low")
    assert int((low == 0).sum()) == masked
    if 0 < masked < len(ar):  # static-confidence drops the most confident tokens at theta_0, -low the least
        assert logp0[static == 0].min() >= logp0[static == 1].max()
        assert logp0[low == 0].max() <= logp0[low == 1].min()
    assert np.array_equal(resp("mask_dllm"), (delta < -0.2).astype(np.uint8))
    # the dLLM report counts its targets (delta < -tau), not every token whose confidence did not rise
    dllm = json.loads((data / "masks" / "mask_dllm.json").read_text())
    from collections import Counter

    ids = np.concatenate([ds.read_example(i)[ds.response_slice(i)] for i in range(ds.num_examples)])
    for key, where in (("top_target_tokens", delta < -0.2), ("top_yet_to_learn_tokens", delta <= 0)):
        want = Counter(ids[where].tolist()).most_common(5)
        assert [(t["id"], t["count"]) for t in dllm[key][:5]] == want, key
    assert (data / "masks" / "t3s_mask.html").read_text().count("class=a") > 0
    assert (data / "masks" / "t3s_mask.png").stat().st_size > 1000
    report = json.loads((data / "masks" / "t3s_mask.json").read_text())
    assert report["masked_fraction"] == pytest.approx(masked / len(ar))
    # prompt tokens are never trained on, whatever the mask
    i = 0
    assert ds.read_example(i, "t3s_mask")[: ds.prompt_lengths[i]].sum() == 0
    # a rerun says which channel it replaced and how that one was made
    p = run([*t3s(), "mask", str(run_dir), "--rule", "random", "--seed", "3"])
    assert "note: replaced the channel mask_random (rule random, seed 0)" in " ".join((p.stdout + p.stderr).split())


def test_masked_training_uses_the_channel(trajectory, tmp_path):
    run_dir, data = trajectory
    from t3s_nemo.data.packed import PackedDataset

    if "mask_random" not in PackedDataset(data).channels:
        if "delta" not in PackedDataset(data).channels:
            run([*t3s(), "profile", str(run_dir)])
        t3s_here("mask", run_dir, "--rule", "random")
    recs = train(tmp_path / "masked", data, "train.steps=1", "train.global_batch_size=2", "mask.channel=mask_random",
                 mode="train", nproc=1)
    plain = train(tmp_path / "plain", data, "train.steps=1", "train.global_batch_size=2")
    assert recs[0]["tokens"] == plain[0]["tokens"]
    frac = json.loads((data / "masks" / "mask_random.json").read_text())["masked_fraction"]
    assert 0 < recs[0]["masked_fraction"] and recs[0]["trained_tokens"] < plain[0]["trained_tokens"]
    assert recs[0]["masked_fraction"] == pytest.approx(frac, abs=0.1)


def test_rrt_is_base_plus_final_minus_bottleneck(trajectory, tmp_path):
    import shutil

    import yaml

    run_dir, _ = trajectory
    # a copy of the run whose config names other selectors: RRT combines the student's own weights
    rrt_run = tmp_path / "run"
    shutil.copytree(run_dir, rrt_run, ignore=shutil.ignore_patterns("profile", "checkpoints", "tensorboard"))
    cfg = yaml.safe_load((rrt_run / "config.yaml").read_text())
    cfg["profile"].update(selector_base=str(tmp_path / "no_selector"), selector_bottleneck=str(tmp_path / "no_b"))
    (rrt_run / "config.yaml").write_text(yaml.safe_dump(cfg))
    # shard by shard at TP=2: each rank loads only its half of the three single-process checkpoints
    run([*t3s(), "rrt", str(rrt_run), "--out", str(tmp_path / "rrt"), "--tp", "2", "--nproc-per-node", "2"])
    from t3s_nemo.checkpoint.consolidate import read_full_state  # kept equal to megatron's load by test_parallel

    snaps = run_dir / "snapshots"
    pairs = (("rrt", tmp_path / "rrt"), ("s0", snaps / "step_0"), ("sb", snaps / "step_2"), ("sf", snaps / "step_3"))
    out = {name: read_full_state(path)[0] for name, path in pairs}
    for k in out["rrt"]:
        # computed in fp32 as theta_0 + (theta_f - theta_b), with one accumulator: exactly that sum
        torch.testing.assert_close(out["rrt"][k], out["s0"][k] + (out["sf"][k] - out["sb"][k]), rtol=0, atol=0)


def test_profile_refuses_a_selector_with_another_tokenizer_and_records_the_selector(trajectory, tmp_path):
    import shutil
    import subprocess

    from procs import env
    from t3s_nemo.data.packed import PackedDataset

    run_dir, data = trajectory
    other = tmp_path / "other_selector"
    shutil.copytree(run_dir / "snapshots" / "step_0", other)
    marker = json.loads((other / "t3s.json").read_text())
    marker["tokenizer_fingerprint"] = "sha256:0000"
    (other / "t3s.json").write_text(json.dumps(marker))
    # another selector, named as a user names one for a run (an 8B selector for a 32B student)
    p = subprocess.run([*t3s(), "profile", str(run_dir), f"profile.selector_base={other}"],
                       env=env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "selector uses another tokenizer" in p.stderr and "Traceback" not in p.stderr
    if "delta" not in PackedDataset(data).channels:
        run([*t3s(), "profile", str(run_dir)])
    info = PackedDataset(data).channels["delta"]  # add_channel stores the info next to the dtype
    assert info["selector_base"].endswith("step_0") and info["selector_bottleneck"].endswith("step_2")


def _profiled(trajectory):
    from t3s_nemo.data.packed import PackedDataset

    run_dir, data = trajectory
    if "delta" not in PackedDataset(data).channels:
        run([*t3s(), "profile", str(run_dir)])
    return run_dir, data


def test_analyze_gradients_match_transformers_and_tp2(trajectory, tmp_path):
    run_dir, data = _profiled(trajectory)
    run([*t3s(), "analyze", "gradients", str(run_dir), "--num-bins", "3", "--out", str(tmp_path / "one")])
    one = json.loads((tmp_path / "one" / "gradients.json").read_text())
    assert [r["step"] for r in one["rows"]] == [0, 1, 2, 3]
    assert (tmp_path / "one" / "gradients.png").stat().st_size > 1000
    # the numbers at theta_b against transformers' autograd on the exported snapshot (float64 reference)
    export(run_dir / "snapshots" / "step_2", tmp_path / "hf")
    r = run_script("grads_vs_hf.py", data, tmp_path / "hf", tmp_path / "one" / "gradients.json", 2)
    assert r["anchor_tokens"] == r["ref"]["anchor_tokens"] > 0
    assert r["response_tokens"] == r["ref"]["response_tokens"]
    for key in ("anchor_grad_norm", "other_grad_norm"):
        assert r["got"][key] == pytest.approx(r["ref"][key], rel=1e-4)
    assert r["got"]["cosine"] == pytest.approx(r["ref"]["cosine"], abs=1e-4)
    # TP=2: shards summed, replicated parameters counted once
    run([*t3s(), "analyze", "gradients", str(run_dir), "--num-bins", "3", "--every", "2", "--tp", "2",
         "--nproc-per-node", "2", "--out", str(tmp_path / "two")])
    two = {r["step"]: r for r in json.loads((tmp_path / "two" / "gradients.json").read_text())["rows"]}
    assert sorted(two) == [0, 2, 3]
    for row in one["rows"]:
        if row["step"] in two:
            for key in ("anchor_grad_norm", "other_grad_norm", "cosine", "anchor_loss"):
                assert two[row["step"]][key] == pytest.approx(row[key], rel=1e-4, abs=1e-6)


def test_analyze_transfer_matrix(trajectory, tmp_path):
    from t3s_nemo.data.packed import PackedDataset

    run_dir, data = _profiled(trajectory)
    run([*t3s(), "analyze", "transfer", str(run_dir), "--checkpoint", "2", "--lr", "0.01", "--num-bins", "3",
         "--out", str(tmp_path)])
    r = json.loads((tmp_path / "transfer.json").read_text())
    assert r["groups"] == 4 and len(r["matrix"]) == 4 and all(len(row) == 4 for row in r["matrix"])
    assert set(r["bins"]).isdisjoint(r["eval_bins"]) and len(r["eval_bins"]) == 3
    ds = PackedDataset(data)
    delta = np.concatenate([ds.read_example(i, "delta")[ds.response_slice(i)] for b in r["bins"] for i in ds.bin_range(b)])
    assert sum(r["tokens_per_group"]) == len(delta)
    assert r["delta_edges"] == sorted(r["delta_edges"])
    # an SGD step on a group lowers that group's loss on other examples for a small enough step (first order)
    assert sum(r["matrix"][i][i] < 0 for i in range(4)) >= 3
    assert (tmp_path / "transfer.png").stat().st_size > 1000
    import subprocess

    from procs import env

    bad = subprocess.run([*t3s(), "analyze", "transfer", str(run_dir), "--checkpoint", "99"], capture_output=True,
                         text=True, env=env(), timeout=120)
    assert bad.returncode != 0 and "step_99" in bad.stderr + bad.stdout and "Traceback" not in bad.stderr
