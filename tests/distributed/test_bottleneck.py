"""The bottleneck stage: sampling from exported models, rule selection and outputs, end to end on a real run."""

import json
import re
import os
import shutil

import pytest

from procs import DEMO, REPO, TINY, train
from t3s_nemo.errors import T3SError
from t3s_nemo.trajectory.bottleneck import prompt_indices, result_key, run_bottleneck

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _child_finds_package(monkeypatch):
    # the stage exports snapshots in a child `python -m t3s_nemo.model.hf`
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


# ---- generation on a real (random-init) Hugging Face Qwen3 ------------------------------------------------
@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    path = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=10000.0,
                      tie_word_embeddings=True, max_position_embeddings=4096)
    Qwen3ForCausalLM(cfg).save_pretrained(path)
    for f in (DEMO / "tokenizer").iterdir():
        shutil.copy(f, path / f.name)
    return path




def test_greedy_left_padded_batches_match_a_plain_decoding_loop(tiny_hf, chat_prompts):
    import torch
    from transformers import AutoModelForCausalLM

    from t3s_nemo.data.tokenizer import load_tokenizer
    from t3s_nemo.trajectory.generate import generate

    assert len({len(p) for p in chat_prompts}) == 3  # different lengths: the batch really is padded
    batched = generate(tiny_hf, chat_prompts, n=2, temperature=0.0, top_p=1.0, max_new_tokens=12, seed=0,
                       batch_size=3, backend="transformers")
    single = generate(tiny_hf, chat_prompts, n=1, temperature=0.0, top_p=1.0, max_new_tokens=12, seed=0,
                      batch_size=1, backend="transformers")
    tok = load_tokenizer(tiny_hf)
    model = AutoModelForCausalLM.from_pretrained(tiny_hf, dtype=torch.float32)
    for prompt, b, s in zip(chat_prompts, batched, single):
        ids = list(prompt)
        for _ in range(12):  # full forward each step: no cache, no padding
            with torch.no_grad():
                ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
            if ids[-1] == tok.eos_token_id:
                break
        expected = tok.decode(ids[len(prompt):], skip_special_tokens=True)
        assert [x.text for x in b] == [expected, expected]
        assert s[0].text == expected
        assert b[0].num_tokens == len(ids) - len(prompt)


def test_sampling_is_seeded_and_gives_n_samples_per_prompt(tiny_hf, chat_prompts):
    from t3s_nemo.trajectory.generate import generate

    def run(seed):
        out = generate(tiny_hf, chat_prompts, n=3, temperature=1.0, top_p=0.95, max_new_tokens=10, seed=seed,
                       batch_size=2, backend="auto")
        return [[(s.text, s.num_tokens) for s in ss] for ss in out]

    a = run(7)
    assert [len(ss) for ss in a] == [3, 3, 3]
    assert all(0 < k <= 10 for ss in a for _, k in ss)
    assert len({t for t, _ in a[1]}) > 1  # the n samples differ
    assert run(7) == a
    assert run(8) != a


def test_a_sample_ends_at_the_first_eos(demo_tokenizer):
    from t3s_nemo.trajectory.generate import _sample

    eos = demo_tokenizer.eos_token_id
    body = demo_tokenizer.encode(r"so \boxed{4}", add_special_tokens=False)
    s = _sample(demo_tokenizer, body + [eos] + body, [eos])
    assert (s.text, s.num_tokens) == (r"so \boxed{4}", len(body) + 1)
    s = _sample(demo_tokenizer, body, [eos])  # ran out of max_new_tokens
    assert (s.text, s.num_tokens) == (r"so \boxed{4}", len(body))


def test_vllm_backend_names_the_extra_when_missing(tiny_hf):
    try:
        import vllm  # noqa: F401

        pytest.skip("vLLM is installed")
    except ImportError:
        pass
    from t3s_nemo.trajectory.generate import generate

    with pytest.raises(T3SError, match=r"pip install 't3s-nemo\[eval\]'"):
        generate(tiny_hf, [[1, 2, 3]], n=1, temperature=0.6, top_p=0.95, max_new_tokens=4, seed=0, batch_size=1,
                 backend="vllm")


# ---- rule selection and outputs on a hand-made curve (no models) -------------------------------------------
STEPS = [0, 5, 10, 15, 20, 25, 30, 35, 40, 45]
# correct samples out of 4 prompts x 4 samples: a shallow first dip that recovers (step 5), the lowest single
# snapshot (step 20), and the broadest valley (step 35)
CORRECT = [14, 8, 11, 8, 2, 9, 4, 3, 4, 12]
OVERRIDES = ["bottleneck.num_prompts=4", "bottleneck.window=3", "bottleneck.recovery=0.15"]


def fake_run(tmp_path, data, correct=CORRECT, steps=STEPS):
    """A run directory with snapshots (markers only), a loss log and saved per-snapshot results."""
    from t3s_nemo.config import load_config, save_config
    from t3s_nemo.data.packed import PackedDataset

    run = tmp_path / "run"
    cfg = load_config(TINY, [f"run_dir={run}", f"data.path={data}"])
    save_config(cfg, run / "config.yaml")
    g = cfg.generation
    gen = {"backend": "transformers", "n": g.n, "temperature": g.temperature, "top_p": g.top_p,
           "max_new_tokens": g.max_new_tokens, "seed": g.seed, "batch_size": g.batch_size, "tp": g.tp}
    ds = PackedDataset(data)
    ids = [ds.ids[i] for i in prompt_indices(ds.num_examples, 4, g.seed)]
    assert g.n == 4
    for step, total in zip(steps, correct):
        snap = run / "snapshots" / f"step_{step}"
        snap.mkdir(parents=True)
        (snap / "t3s.json").write_text(json.dumps({"kind": "weights", "step": step}))
        per_prompt = [min(4, max(0, total - 4 * k)) for k in range(4)]
        result = {"step": step, "snapshot": str(snap), "accuracy": total / 16, "mean_tokens": 100.0 + step, "n": 4,
                  "prompts": 4, "correct": per_prompt, "seconds": 1.0, **result_key(gen, ids), "backend": "transformers"}
        (run / "bottleneck").mkdir(exist_ok=True)
        (run / "bottleneck" / f"step_{step}.json").write_text(json.dumps(result))
    (run / "trajectory.jsonl").write_text("".join(json.dumps({"step": s, "loss": 3.0 - 0.05 * s}) + "\n"
                                                  for s in range(1, steps[-1] + 1)))
    return run


def mtimes(run):
    return {p.name: p.stat().st_mtime_ns for p in (run / "bottleneck").glob("step_*.json")}


@pytest.mark.parametrize("rule, step", [("argmin", 20), ("moving_average", 35), ("first_recovery", 5)])
def test_rules_pick_theta_b_on_saved_results_and_write_the_outputs(rule, step, tiny_data, tmp_path):
    run = fake_run(tmp_path, tiny_data)
    before = mtimes(run)
    summary = run_bottleneck(run, [*OVERRIDES, f"bottleneck.rule={rule}"])
    assert mtimes(run) == before  # every snapshot was read back, none evaluated again
    assert json.loads((run / "bottleneck.json").read_text()) == summary
    assert summary["rule"] == rule and (summary["window"], summary["recovery"], summary["margin"]) == (3, 0.15, 0.02)
    assert summary["bottleneck_step"] == step
    assert summary["bottleneck_dir"] == str(run / "snapshots" / f"step_{step}")
    assert [s["step"] for s in summary["snapshots"]] == STEPS
    assert [s["accuracy"] for s in summary["snapshots"]] == [c / 16 for c in CORRECT]
    assert [s["loss"] for s in summary["snapshots"]] == [None] + [pytest.approx(3.0 - 0.05 * s) for s in STEPS[1:]]
    assert summary["snapshots"][2]["mean_tokens"] == 110.0
    assert summary["base_accuracy"] == 14 / 16 and summary["no_dip"] is False
    expected_min = {"argmin": 2 / 16, "moving_average": (4 + 3 + 4) / 48, "first_recovery": 8 / 16}[rule]
    assert summary["min_accuracy"] == pytest.approx(expected_min)
    assert summary["dip"] == pytest.approx(14 / 16 - expected_min)
    assert summary["generation"]["seed"] == 0 and summary["generation"]["backend"] == "transformers"
    assert (run / "accuracy.png").read_bytes().startswith(PNG)


def test_every_kth_snapshot_and_the_step_window(tiny_data, tmp_path):
    run = fake_run(tmp_path, tiny_data)
    s = run_bottleneck(run, [*OVERRIDES, "bottleneck.every=2"])
    assert [x["step"] for x in s["snapshots"]] == [0, 10, 20, 30, 40]
    assert s["bottleneck_step"] == 20
    s = run_bottleneck(run, [*OVERRIDES, "bottleneck.start=25", "bottleneck.end=45"])
    assert [x["step"] for x in s["snapshots"]] == [0, 25, 30, 35, 40, 45]  # theta_0 stays the reference
    assert s["bottleneck_step"] == 35


def test_a_run_without_a_dip_is_refused_unless_forced(tiny_data, tmp_path):
    run = fake_run(tmp_path, tiny_data, correct=[6, 6, 7, 6, 8, 9, 9, 10, 11, 12])
    with pytest.raises(T3SError, match="no Imitation Shock found.*T3S does not apply.*--force"):
        run_bottleneck(run, OVERRIDES)
    assert not (run / "bottleneck.json").exists()
    assert (run / "accuracy.png").read_bytes().startswith(PNG)  # the curve, to see why
    s = run_bottleneck(run, OVERRIDES, force=True)
    assert s["no_dip"] is True and s["forced"] is True and s["bottleneck_step"] == 5
    assert run_bottleneck(run, [*OVERRIDES, "bottleneck.force=true"])["no_dip"] is True


def test_only_generation_and_bottleneck_keys_can_be_overridden(tiny_data, tmp_path):
    run = fake_run(tmp_path, tiny_data)
    with pytest.raises(T3SError, match="generation.\\*, bottleneck.\\* and data.path"):
        run_bottleneck(run, ["train.lr=1.0"])
    with pytest.raises(T3SError, match="unknown config key 'bottleneck.windw'"):
        run_bottleneck(run, ["bottleneck.windw=3"])
    with pytest.raises(T3SError, match=re.escape("'generation.backend': 'sglang' is not one of auto | transformers | vllm | megatron")):
        run_bottleneck(run, ["generation.backend=sglang"])


# ---- end to end on a real trajectory run --------------------------------------------------------------------
E2E = ["generation.n=2", "generation.max_new_tokens=24", "generation.batch_size=4", "bottleneck.num_prompts=4"]


def test_real_run_end_to_end_and_resumable(tiny_data, tmp_path):
    import torch

    run = tmp_path / "run"
    records = train(run, tiny_data, "train.steps=3", "train.global_batch_size=2", "checkpoint.snapshot_interval=1")

    # a random-init tiny model answers nothing right: no dip, refused, but every snapshot is evaluated and kept
    with pytest.raises(T3SError, match="no Imitation Shock found"):
        run_bottleneck(run, E2E)
    assert sorted(mtimes(run)) == [f"step_{s}.json" for s in range(4)]
    assert not (run / "bottleneck.json").exists()
    assert not list((run / "bottleneck").glob(".hf-*"))  # temporary exports deleted
    before = mtimes(run)

    summary = run_bottleneck(run, E2E, force=True)
    assert mtimes(run) == before  # the second call evaluated nothing again
    assert json.loads((run / "bottleneck.json").read_text()) == summary
    assert (run / "accuracy.png").read_bytes().startswith(PNG)
    assert [s["step"] for s in summary["snapshots"]] == [0, 1, 2, 3]
    assert [s["loss"] for s in summary["snapshots"]] == [None] + [pytest.approx(r["loss"]) for r in records]
    for s in summary["snapshots"]:
        assert (s["n"], s["prompts"], s["accuracy"]) == (2, 4, 0.0)
        assert 0 < s["mean_tokens"] <= 24
    assert summary["bottleneck_step"] in (1, 2, 3) and summary["no_dip"] is True and summary["dip"] == 0.0
    assert summary["bottleneck_dir"] == str((run / "snapshots" / f"step_{summary['bottleneck_step']}").resolve())
    gen = summary["generation"]
    assert (gen["n"], gen["max_new_tokens"], gen["seed"], gen["backend_requested"]) == (2, 24, 0, "auto")
    if not torch.cuda.is_available():
        assert gen["backend"] == "transformers"
    step1 = json.loads((run / "bottleneck" / "step_1.json").read_text())
    assert step1["correct"] == [0, 0, 0, 0] and len(step1["ids"]) == 4
