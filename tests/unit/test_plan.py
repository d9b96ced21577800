"""The memory plan's parameter counts and the shipped large configs' fit."""

import pytest

from t3s_nemo.config import load_config
from t3s_nemo.model import plan
from t3s_nemo.model.qwen3 import PRESETS, num_parameters, padded_vocab_size, resolve_shape
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("preset", list(PRESETS))
def test_single_rank_count_is_the_whole_model(preset):
    shape = PRESETS[preset]
    first, last = plan.rank_params(shape, 151936, tp=1, pp=1)
    assert first == last == num_parameters(shape, 151936)


def test_published_qwen3_sizes():
    # Qwen3 model cards: 8.2B and 32.8B parameters (vocab 151936)
    assert num_parameters(PRESETS["qwen3_8b"], 151936) / 1e9 == pytest.approx(8.19, abs=0.02)
    assert num_parameters(PRESETS["qwen3_32b"], 151936) / 1e9 == pytest.approx(32.76, abs=0.03)
    assert num_parameters(PRESETS["qwen3_0_6b"], 151936) / 1e9 == pytest.approx(0.596, abs=0.01)


def test_tp_and_pp_split_the_parameters():
    shape = PRESETS["qwen3_32b"]
    full = num_parameters(shape, 151936)
    first, last = plan.rank_params(shape, 151936, tp=8, pp=2)
    # each of the 16 ranks holds about a sixteenth; only norms are replicated across TP
    assert full / 16 * 0.98 < first < full / 16 * 1.02
    assert abs(first - last) < shape.hidden_size * 2


@pytest.mark.parametrize("name", ["qwen3_8b", "qwen3_32b"])
def test_shipped_config_fits_an_80gb_h100_at_16k(name):
    cfg = load_config(REPO / "configs" / name / "sft.yaml")
    shape = resolve_shape(cfg.model)
    p = cfg.parallel
    est = plan.estimate(shape, padded_vocab_size(151669, p.tp), p.tp, p.pp, p.cp, 1, cfg.data.seq_length,
                        cfg.train.micro_batch_size, cfg.model.recompute, p.sequence_parallel, p.distributed_optimizer)
    assert est.total < 79.6 * plan.GiB * 0.9


@pytest.mark.parametrize("preset,layouts", [
    ("tiny", [(1, 1), (2, 1), (1, 2), (2, 2)]),
    ("qwen3_8b", [(4, 1), (8, 2)]),  # untied embeddings
    ("qwen3_32b", [(8, 2), (8, 4)]),
])
def test_meta_device_models_have_the_closed_form_counts(preset, layouts):
    # real megatron-core GPTModels of the first and last pipeline stage, built on the meta device
    shape = PRESETS[preset]
    built = plan.meta_rank_params(shape, 151669, layouts)
    for tp, pp in layouts:
        assert built[(tp, pp)] == plan.rank_params(shape, padded_vocab_size(151669, tp), tp, pp), (tp, pp)


def test_llada2_mini_has_the_published_size():
    # LLaDA2.0-mini: "16B" total, about 1.4B activated per token (vocab 157184, untied embeddings)
    shape = PRESETS["llada2_mini"]
    total = num_parameters(shape, 157184)
    active = num_parameters(shape, 157184, active=True)
    assert 15.5e9 < total < 16.7e9, total
    assert 1.3e9 < active < 1.6e9, active
    # 19 MoE layers of 256 experts hold almost all of it
    experts = 19 * 256 * 3 * 2048 * 512
    assert experts / total > 0.9


def test_expert_parallelism_splits_only_the_routed_experts():
    shape = PRESETS["llada2_mini"]
    vocab = padded_vocab_size(157184, 1)
    one, _ = plan.rank_params(shape, vocab, tp=1, pp=1, ep=1)
    eight, _ = plan.rank_params(shape, vocab, tp=1, pp=1, ep=8)
    experts, _ = plan.rank_expert_params(shape, tp=1, pp=1, ep=1)
    assert one - eight == experts - experts // 8
    # with EP the expert optimizer state is sharded over dp/ep ranks: the same bytes per rank at dp=ep=8
    a = plan.estimate(shape, vocab, 1, 1, 1, 8, 8192, ep=1)
    b = plan.estimate(shape, vocab, 1, 1, 1, 8, 8192, ep=8)
    assert b.weights < a.weights / 4 and b.optimizer == pytest.approx(a.optimizer, rel=1e-9)


@pytest.mark.parametrize("preset,layouts", [
    ("llada2_mini", [(1, 1, 1), (1, 2, 8)]),  # the dense first layer only on the first stage
    ("tiny_moe", [(1, 1), (1, 2, 2), (2, 1, 2)]),
])
def test_meta_device_moe_models_have_the_closed_form_counts(preset, layouts):
    # megatron-core's MoE layers (router, SequentialMLP experts split over ep ranks, shared expert),
    # first-k-dense through moe_layer_freq, built on the meta device per (tp, pp, ep)
    shape = PRESETS[preset]
    vocab = 157184 if preset == "llada2_mini" else 454
    built = plan.meta_rank_params(shape, vocab, layouts)
    for layout in layouts:
        tp, pp, ep = (*layout, 1)[:3]
        assert built[layout] == plan.rank_params(shape, padded_vocab_size(vocab, tp), tp, pp, ep), layout
    if preset == "llada2_mini":
        assert built[(1, 1, 1)][0] == num_parameters(shape, padded_vocab_size(vocab, 1))


def test_shipped_llada2_mini_config_fits_one_8xh100_node():
    cfg = load_config(REPO / "configs" / "llada2_mini" / "sft.yaml")
    shape = resolve_shape(cfg.model)
    p = cfg.parallel
    assert shape.is_moe and cfg.model.objective == "dllm" and p.ep == 8
    est = plan.estimate(shape, padded_vocab_size(157184, p.tp), p.tp, p.pp, p.cp, 8 // (p.tp * p.pp * p.cp),
                        cfg.data.seq_length, cfg.train.micro_batch_size, cfg.model.recompute, p.sequence_parallel,
                        p.distributed_optimizer, ep=p.ep)
    assert est.total < 79.6 * plan.GiB * 0.9


@pytest.mark.parametrize("recompute,layers", [("none", 64), ("selective", 1), ("full", 1)])
def test_sdpa_context_parallelism_counts_the_gathered_keys_and_values(recompute, layers):
    # the sdpa spec's CP all-gathers K and V and concatenates every example's for SDPA: each rank also
    # holds the whole micro-batch's, 2 x groups / tp x head_dim values per token, kept in every layer
    # unless recomputed
    shape = PRESETS["qwen3_32b"]
    vocab = padded_vocab_size(151669, 8)
    args = (shape, vocab, 8, 2, 2, 1, 16384, 1, recompute)
    ring, gathered = plan.estimate(*args), plan.estimate(*args, gathered_kv=True)
    kv = 2 * 16384 * shape.num_query_groups // 8 * shape.head_dim * 2  # bf16
    assert gathered.activations - ring.activations == pytest.approx(kv * layers)
    one = (shape, vocab, 8, 2, 1, 2, 16384, 1, recompute)
    assert plan.estimate(*one, gathered_kv=True).activations == plan.estimate(*one).activations


def test_plan_says_how_it_counted_context_parallelism(monkeypatch, capsys):
    import sys

    from t3s_nemo.cli import main

    for spec, said in (("sdpa", "all-gathers K and V: counted in activ"), ("te", "ring attention")):
        monkeypatch.setattr(sys, "argv", ["t3s", "plan", str(REPO / "configs/qwen3_32b/sft.yaml"), "parallel.cp=2",
                                          f"model.spec={spec}"])
        main()
        out = " ".join(capsys.readouterr().out.split())  # the note may wrap
        assert f"cp > 1 rows: model.spec {spec}" in out and said in out


def test_plan_counts_the_vocabulary_rows_of_model_init(monkeypatch, capsys, tmp_path):
    # a run from Qwen3's HF weights keeps their 151,936 rows at any TP (not the tokenizer padded per TP)
    import json
    import sys

    from t3s_nemo.cli import main

    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 151936}))
    monkeypatch.setattr(sys, "argv", ["t3s", "plan", str(REPO / "configs/qwen3_8b/sft.yaml"), f"model.init={tmp_path}"])
    main()
    out = " ".join(capsys.readouterr().out.split())
    assert "8.19B parameters, 151,936 vocabulary rows (model.init's)" in out
