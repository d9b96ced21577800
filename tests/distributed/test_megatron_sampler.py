"""generation.backend=megatron: megatron-core's inference engine on t3s checkpoints, at TP=1 and TP=2, against
transformers on the exported model, and as the bottleneck stage's sampler."""

import json
import os
import sys

import pytest

from procs import DEMO, REPO, train
from procs import run as sh
from t3s_nemo.trajectory.bottleneck import export_snapshot, run_bottleneck
from t3s_nemo.trajectory.generate import generate


@pytest.fixture(autouse=True)
def _child_finds_package(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory):
    # untied embeddings: a random-init model then prefers varied tokens (tied ones repeat the last token)
    run = tmp_path_factory.mktemp("sampler") / "run"
    train(run, tiny_data, "train.steps=1", "train.global_batch_size=2", "checkpoint.snapshot_interval=1",
          "model.tie_embeddings=false")
    return run




def test_greedy_megatron_samples_equal_transformers_at_tp1_and_tp2(run, chat_prompts, tmp_path):
    snap = run / "snapshots" / "step_0"
    hf = tmp_path / "hf"
    export_snapshot(snap, hf, DEMO / "tokenizer")
    want = generate(hf, chat_prompts, 1, 0.0, 1.0, 16, 0, 3, backend="transformers")
    assert len({s[0].text for s in want}) == 3 and all(s[0].num_tokens == 16 for s in want)  # a real comparison
    for tp in (1, 2):
        got = generate(snap, chat_prompts, 1, 0.0, 1.0, 16, 0, 3, backend="megatron", tp=tp, tokenizer_dir=DEMO / "tokenizer")
        assert [[(x.text, x.num_tokens) for x in s] for s in got] == [[(x.text, x.num_tokens) for x in s] for s in want], tp


def _greedy(snap, prompts, tmp_path, eos, *also_stop) -> list[list[int]]:
    """One greedy sample of 16 tokens per prompt from the sampling recipe itself."""
    f, out = tmp_path / "prompts.json", tmp_path / "out.json"
    f.write_text(json.dumps(prompts))
    sh([sys.executable, "-m", "t3s_nemo.recipes.sample", "--checkpoint", str(snap), "--prompts", str(f), "--out",
        str(out), "--eos", str(eos), "--also-stop", *map(str, also_stop), "--num-samples", "1", "--temperature", "0",
        "--max-new-tokens", "16"])
    result = json.loads(out.read_text())
    assert result["generated_tokens"] == sum(len(s[0]) for s in result["samples"])
    return [s[0] for s in result["samples"]]


def test_megatron_ends_a_sample_at_any_stop_id_and_keeps_the_stop(run, chat_prompts, tmp_path):
    # a Qwen3 Base student may end its turn with <|endoftext|> or <|im_end|>: either must end the row in the
    # engine (not only cut the text afterwards), and the stop counts as a generated token, as in transformers
    from t3s_nemo.data.tokenizer import load_tokenizer

    snap, eos = run / "snapshots" / "step_0", load_tokenizer(DEMO / "tokenizer").eos_token_id
    free = _greedy(snap, chat_prompts, tmp_path, eos)
    assert all(len(r) == 16 and eos not in r for r in free)
    stops = {eos, free[0][3], free[1][6]}
    want = []
    for r in free:
        cut = [i for i, t in enumerate(r) if t in stops]
        want.append(r[: cut[0] + 1] if cut else r)
    assert len(want[0]) <= 4 and len(want[1]) <= 7  # both rows really end early
    assert _greedy(snap, chat_prompts, tmp_path, eos, *sorted(stops - {eos})) == want


def test_bottleneck_samples_snapshots_without_exporting_them(run, chat_prompts, tmp_path):
    overrides = ["generation.backend=megatron", "generation.n=2", "generation.max_new_tokens=12",
                 "bottleneck.num_prompts=3"]
    summary = run_bottleneck(run, overrides, force=True)
    assert [s["step"] for s in summary["snapshots"]] == [0, 1]
    assert summary["generation"]["backend"] == "megatron"
    for step in (0, 1):
        r = json.loads((run / "bottleneck" / f"step_{step}.json").read_text())
        assert (r["n"], r["prompts"], r["backend"]) == (2, 3, "megatron")
        assert 0 < r["mean_tokens"] <= 12
    assert not list((run / "bottleneck").glob(".hf-*"))


def test_a_hugging_face_directory_is_refused_with_the_way_out(run, tmp_path):
    from t3s_nemo.errors import T3SError

    with pytest.raises(T3SError, match="megatron samples from a complete t3s checkpoint"):
        generate(tmp_path, [[1, 2, 3]], 1, 0.0, 1.0, 4, 0, 1, backend="megatron")


def test_eval_samples_a_checkpoint_in_place_and_refuses_an_hf_directory(run, tmp_path):
    from t3s_nemo.errors import T3SError
    from t3s_nemo.trajectory.evaluate import _prepare_model

    snap = run / "snapshots" / "step_1"
    model, tok_dir, fp = _prepare_model(snap, DEMO / "tokenizer", tmp_path, export=False)
    assert (model, tok_dir) == (snap, DEMO / "tokenizer") and not list(tmp_path.iterdir())
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(T3SError, match="megatron samples from a t3s checkpoint"):
        _prepare_model(tmp_path, DEMO / "tokenizer", tmp_path / "w", export=False)


def test_kv_cache_estimate_is_what_megatron_allocates():
    # on a GPU the sampler caps its rows by this estimate and the free memory (recipes/sample.py)
    from procs import run_script

    r = run_script("kv_checks.py")
    assert r["layers"] == 2 and r["allocated_per_row"] == r["estimate_per_row"] > 0
    assert r["rows_in_10_rows_of_memory"] == 10
