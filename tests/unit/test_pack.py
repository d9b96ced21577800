"""Packing: tokens and loss masks survive the round trip, bins are first-fit-decreasing and never split
an example, every input format packs the same, and the training view of a bin (labels, positions,
cu_seqlens, block-diagonal mask) is right."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from t3s_nemo.data.dataset import PackedBins, block_causal_mask, collate
from t3s_nemo.data.pack import PackOptions, first_fit_decreasing, pack
from t3s_nemo.data.packed import PackedDataset
from t3s_nemo.data.source import Fields


def expected_tokens(tok, messages, template="chat", system_prompt=""):
    """(token ids, prompt length) made independently of pack(): the whole rendered text tokenized at once."""
    if template == "plain":
        prompt = tok(messages[0]["content"], add_special_tokens=False)["input_ids"]
        response = tok(messages[-1]["content"] + tok.eos_token, add_special_tokens=False)["input_ids"]
        return prompt + response, len(prompt)
    if system_prompt:
        messages = [{"role": "system", "content": system_prompt}] + messages
    prompt_text = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full_text = tok.apply_chat_template(messages, tokenize=False)
    full = tok(full_text, add_special_tokens=False)["input_ids"]
    prompt = tok(prompt_text, add_special_tokens=False)["input_ids"]
    assert full[: len(prompt)] == prompt  # the demo tokenizer does not merge across the boundary
    return full, len(prompt)


def chat(rec):
    return [{"role": "user", "content": rec["prompt"]}, {"role": "assistant", "content": rec["response"]}]


def all_examples(ds: PackedDataset) -> dict[str, tuple[list[int], list[int]]]:
    return {
        eid: (ds.read_example(i).tolist(), ds.read_example(i, "loss_mask").tolist()) for i, eid in enumerate(ds.ids)
    }


def naive_ffd(lengths, capacity):
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # Python's sort is stable
    bins, room = [], []
    for i in order:
        for b, r in enumerate(room):
            if r >= lengths[i]:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


# ---- first_fit_decreasing --------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_ffd_matches_naive_first_fit_decreasing(seed):
    rng = np.random.default_rng(seed)
    capacity = int(rng.integers(8, 300))
    n = int(rng.integers(1, 400))
    lengths = rng.integers(1, capacity + 1, size=n)
    if seed % 2:  # many ties exercise the stable order
        lengths = rng.choice([1, capacity // 3, capacity // 2, capacity], size=n)
    bins = first_fit_decreasing(lengths, capacity)
    assert bins == naive_ffd(lengths.tolist(), capacity)
    flat = sorted(i for b in bins for i in b)
    assert flat == list(range(n))  # every index exactly once
    assert all(sum(int(lengths[i]) for i in b) <= capacity for b in bins)
    assert all(b for b in bins)


def test_ffd_small_cases():
    assert first_fit_decreasing(np.array([], dtype=np.int64), 10) == []
    assert first_fit_decreasing(np.array([3, 7, 5, 5]), 10) == [[1, 0], [2, 3]]
    assert first_fit_decreasing(np.array([10, 10, 10]), 10) == [[0], [1], [2]]


def test_ffd_refuses_items_longer_than_capacity():
    with pytest.raises(ValueError, match=r"item lengths must be in 0\.\.10, got 3\.\.11"):
        first_fit_decreasing(np.array([3, 11]), 10)


# ---- round trip ----------------------------------------------------------------------------------
def test_round_trip_tokens_and_loss_mask(demo_packed, demo_records, demo_tokenizer):
    path, summary = demo_packed
    ds = PackedDataset(path)
    by_id = {r["id"]: r for r in demo_records}
    assert sorted(ds.ids) == sorted(by_id) and len(ds.ids) == 256
    for i, eid in enumerate(ds.ids):
        want, plen = expected_tokens(demo_tokenizer, chat(by_id[eid]))
        assert ds.read_example(i).tolist() == want, eid
        assert ds.read_example(i, "loss_mask").tolist() == [0] * plen + [1] * (len(want) - plen), eid
        assert int(ds.prompt_lengths[i]) == plen
        assert ds.answers[i] == by_id[eid]["answer"]
    lengths = ds.sequence_lengths
    assert summary.num_examples == ds.num_examples == 256
    assert summary.num_tokens == ds.meta["num_tokens"] == int(lengths.sum())
    assert summary.response_tokens == ds.meta["response_tokens"] == int((lengths - ds.prompt_lengths).sum())
    assert summary.num_bins == ds.num_bins == ds.meta["num_bins"]
    assert summary.fill == pytest.approx(lengths.sum() / (ds.num_bins * 512))
    assert ds.meta["template"] == "chat" and ds.meta["dropped_overflow"] == 0 and ds.meta["truncated"] == 0


def test_bins_hold_whole_examples_in_ffd_order(demo_packed, demo_records, demo_tokenizer):
    ds = PackedDataset(demo_packed[0])
    # the document index partitions the examples into contiguous bins of at most seq_length tokens
    doc = ds.document_indices.tolist()
    assert doc[0] == 0 and doc[-1] == ds.num_examples and doc == sorted(doc)
    bin_tokens = [int(ds.sequence_lengths[ds.bin_range(b)].sum()) for b in range(ds.num_bins)]
    assert max(bin_tokens) <= 512 and sum(bin_tokens) == ds.num_tokens
    # the tokens channel stores each bin as one document of whole examples
    for b in range(ds.num_bins):
        parts = ds.read_bin(b, ("tokens",))["tokens"]
        assert [len(p) for p in parts] == ds.sequence_lengths[ds.bin_range(b)].tolist()
    # and the bins are exactly first-fit-decreasing over the input lengths
    in_order = [len(expected_tokens(demo_tokenizer, chat(r))[0]) for r in demo_records]
    bins = first_fit_decreasing(np.array(in_order), 512)
    assert [[demo_records[i]["id"] for i in b] for b in bins] == [
        [ds.ids[i] for i in ds.bin_range(b)] for b in range(ds.num_bins)
    ]


def test_plain_template_round_trip(tmp_path, demo_records, demo_tokenizer, demo_tokenizer_dir, write_jsonl):
    src = write_jsonl(tmp_path / "in.jsonl", demo_records[:20])
    s = pack([src], demo_tokenizer_dir, tmp_path / "out", PackOptions(seq_length=256, template="plain"))
    assert s.template == "plain"
    ds = PackedDataset(tmp_path / "out")
    by_id = {r["id"]: r for r in demo_records}
    for eid, (tokens, mask) in all_examples(ds).items():
        want, plen = expected_tokens(demo_tokenizer, chat(by_id[eid]), template="plain")
        assert tokens == want and tokens[-1] == demo_tokenizer.eos_token_id
        assert mask == [0] * plen + [1] * (len(want) - plen)


def test_traces_longer_than_the_tokenizers_max_length_pack_without_its_warning(tmp_path, demo_records, demo_tokenizer,
                                                                             demo_tokenizer_dir, write_jsonl):
    """Only --seq-length bounds an example: transformers' "Token indices sequence length is longer than the
    specified maximum" (model_max_length, 4096 here) is noise for a 16k-token trace."""
    import subprocess
    import sys

    long = dict(demo_records[0], id="long", response=demo_records[0]["response"] * 120)
    src = write_jsonl(tmp_path / "in.jsonl", [long])
    p = subprocess.run([sys.executable, "-m", "t3s_nemo.cli", "data", "pack", "-i", str(src), "--tokenizer",
                        str(demo_tokenizer_dir), "--seq-length", "32768", "-o", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "T3S_NO_PROGRESS": "1"})
    assert p.returncode == 0, p.stderr
    assert PackedDataset(tmp_path / "out").sequence_lengths[0] > demo_tokenizer.model_max_length
    assert "Token indices sequence length" not in p.stderr + p.stdout


def test_system_prompt_is_part_of_the_prompt(tmp_path, demo_records, demo_tokenizer, demo_tokenizer_dir, write_jsonl):
    src = write_jsonl(tmp_path / "in.jsonl", demo_records[:5])
    pack([src], demo_tokenizer_dir, tmp_path / "out", PackOptions(seq_length=512, system_prompt="Be brief."))
    ds = PackedDataset(tmp_path / "out")
    by_id = {r["id"]: r for r in demo_records}
    for eid, (tokens, mask) in all_examples(ds).items():
        want, plen = expected_tokens(demo_tokenizer, chat(by_id[eid]), system_prompt="Be brief.")
        assert tokens == want and mask == [0] * plen + [1] * (len(want) - plen)
    assert "Be brief." in demo_tokenizer.decode(ds.read_example(0)[: int(ds.prompt_lengths[0])])
    # a run that packs data.input itself takes it as data.system_prompt: the same dataset
    from pathlib import Path

    from t3s_nemo.config import load_config
    from t3s_nemo.recipes.train import ensure_packed

    tiny = Path(__file__).resolve().parents[2] / "configs" / "tiny" / "sft.yaml"
    cfg = load_config(tiny, [f"run_dir={tmp_path / 'run'}", f"data.input={src}", f"data.tokenizer={demo_tokenizer_dir}",
                             "data.seq_length=512", "data.system_prompt=Be brief."])
    assert all_examples(PackedDataset(ensure_packed(cfg, is_main=True))) == all_examples(ds)


# ---- input formats -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_reference(tmp_path_factory, demo_records, demo_tokenizer_dir):
    """The first 24 demo examples packed from one JSONL file: what every other format must reproduce."""
    root = tmp_path_factory.mktemp("formats")
    src = root / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in demo_records[:24]))
    pack([src], demo_tokenizer_dir, root / "ref", PackOptions(seq_length=400))
    ds = PackedDataset(root / "ref")
    return all_examples(ds), dict(zip(ds.ids, ds.answers))


def test_directory_of_jsonl_files(tmp_path, demo_records, demo_tokenizer_dir, small_reference, write_jsonl):
    write_jsonl(tmp_path / "in" / "a.jsonl", demo_records[:10])
    write_jsonl(tmp_path / "in" / "b.jsonl", ["", *map(json.dumps, demo_records[10:24]), "  "])  # blank lines skipped
    (tmp_path / "in" / "notes.txt").write_text("not read")
    pack([tmp_path / "in"], demo_tokenizer_dir, tmp_path / "out", PackOptions(seq_length=400))
    ds = PackedDataset(tmp_path / "out")
    assert all_examples(ds) == small_reference[0]
    assert ds.meta["source"]["inputs"] == [str(tmp_path / "in" / "a.jsonl"), str(tmp_path / "in" / "b.jsonl")]
    src_of = dict(zip(ds.ids, ds.meta["examples"]["source"]))
    assert src_of[demo_records[11]["id"]] == f"{tmp_path / 'in' / 'b.jsonl'}:3"


def test_saved_hf_dataset_dir(tmp_path, demo_records, demo_tokenizer_dir, small_reference):
    import datasets

    datasets.Dataset.from_list(demo_records[:24]).save_to_disk(str(tmp_path / "hf"))
    pack([tmp_path / "hf"], demo_tokenizer_dir, tmp_path / "out", PackOptions(seq_length=400))
    ds = PackedDataset(tmp_path / "out")
    assert all_examples(ds) == small_reference[0]
    assert dict(zip(ds.ids, ds.answers)) == small_reference[1]
    assert ds.meta["examples"]["source"][ds.index_of(demo_records[4]["id"])] == f"{tmp_path / 'hf'}:row 5"


def test_messages_chat_format_with_answer(tmp_path, demo_records, demo_tokenizer_dir, small_reference, write_jsonl):
    rows = [{"id": r["id"], "messages": chat(r), "answer": r["answer"]} for r in demo_records[:24]]
    write_jsonl(tmp_path / "chat.jsonl", rows)
    pack([tmp_path / "chat.jsonl"], demo_tokenizer_dir, tmp_path / "out", PackOptions(seq_length=400))
    ds = PackedDataset(tmp_path / "out")
    assert all_examples(ds) == small_reference[0]
    assert dict(zip(ds.ids, ds.answers)) == small_reference[1]


def test_multi_turn_messages_train_only_the_last_reply(tmp_path, demo_tokenizer, demo_tokenizer_dir, write_jsonl):
    msgs = [
        {"role": "system", "content": "You add."},
        {"role": "user", "content": "1 + 1?"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "and 2 + 2?"},
        {"role": "assistant", "content": "It is 4."},
    ]
    write_jsonl(tmp_path / "chat.jsonl", [{"messages": msgs, "answer": 4}])
    pack([tmp_path / "chat.jsonl"], demo_tokenizer_dir, tmp_path / "out", PackOptions(seq_length=200))
    ds = PackedDataset(tmp_path / "out")
    want, plen = expected_tokens(demo_tokenizer, msgs)
    assert ds.read_example(0).tolist() == want
    assert ds.read_example(0, "loss_mask").tolist() == [0] * plen + [1] * (len(want) - plen)
    assert demo_tokenizer.decode(ds.read_example(0)[plen:]) == "It is 4.<|im_end|>\n"
    assert ds.ids == ["ex-00000000"] and ds.answers == ["4"]  # numeric answers are kept as text


def test_hf_dataset_mixing_chat_and_prompt_rows(tmp_path, demo_records, demo_tokenizer_dir, small_reference):
    import datasets

    # a dataset with both kinds of rows holds None in the columns of the other kind
    rows = [
        {"id": r["id"], "prompt": None, "response": None, "messages": chat(r), "answer": r["answer"]}
        if k % 2 else {**r, "messages": None}
        for k, r in enumerate(demo_records[:24])
    ]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"))
    pack([tmp_path / "hf"], demo_tokenizer_dir, tmp_path / "out", PackOptions(seq_length=400))
    assert all_examples(PackedDataset(tmp_path / "out")) == small_reference[0]


def test_configurable_field_names(tmp_path, demo_records, demo_tokenizer_dir, small_reference, write_jsonl):
    rows = [{"uid": r["id"], "question": r["prompt"], "solution": r["response"], "gold": r["answer"]}
            for r in demo_records[:24]]
    write_jsonl(tmp_path / "in.jsonl", rows)
    fields = Fields(prompt="question", response="solution", answer="gold", id="uid")
    pack([tmp_path / "in.jsonl"], demo_tokenizer_dir, tmp_path / "out", PackOptions(seq_length=400, fields=fields))
    ds = PackedDataset(tmp_path / "out")
    assert all_examples(ds) == small_reference[0]
    assert dict(zip(ds.ids, ds.answers)) == small_reference[1]


def test_no_answer_field_and_default_ids(tmp_path, demo_records, demo_tokenizer_dir, write_jsonl):
    rows = [{"prompt": r["prompt"], "response": r["response"]} for r in demo_records[:3]]
    write_jsonl(tmp_path / "in.jsonl", rows)
    opts = PackOptions(seq_length=400, fields=Fields(answer=""))
    pack([tmp_path / "in.jsonl"], demo_tokenizer_dir, tmp_path / "out", opts)
    ds = PackedDataset(tmp_path / "out")
    assert sorted(ds.ids) == ["ex-00000000", "ex-00000001", "ex-00000002"]
    assert ds.answers == [None, None, None]


# ---- overflow ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lengths_by_id(demo_records, demo_tokenizer):
    return {r["id"]: expected_tokens(demo_tokenizer, chat(r)) for r in demo_records[:40]}


def test_on_overflow_drop_reports_the_count(tmp_path, demo_records, demo_tokenizer_dir, lengths_by_id, write_jsonl):
    src = write_jsonl(tmp_path / "in.jsonl", demo_records[:40])
    limit = 140
    too_long = {eid for eid, (t, _) in lengths_by_id.items() if len(t) > limit}
    assert 0 < len(too_long) < 40
    s = pack([src], demo_tokenizer_dir, tmp_path / "out", PackOptions(seq_length=limit, on_overflow="drop"))
    assert s.dropped_overflow == len(too_long) and s.truncated == 0
    assert f"dropped {len(too_long)} examples longer than seq_length" in s.lines()
    ds = PackedDataset(tmp_path / "out")
    assert ds.meta["dropped_overflow"] == len(too_long)
    assert set(ds.ids) == set(lengths_by_id) - too_long
    for eid, (tokens, _) in all_examples(ds).items():
        assert tokens == lengths_by_id[eid][0]


def test_on_overflow_truncate_cuts_the_response(tmp_path, demo_records, demo_tokenizer_dir, lengths_by_id, write_jsonl):
    src = write_jsonl(tmp_path / "in.jsonl", demo_records[:40])
    limit = 140
    too_long = {eid for eid, (t, _) in lengths_by_id.items() if len(t) > limit}
    s = pack([src], demo_tokenizer_dir, tmp_path / "out", PackOptions(seq_length=limit, on_overflow="truncate"))
    assert s.truncated == len(too_long) and s.dropped_overflow == 0
    assert f"truncated {len(too_long)} examples to seq_length" in s.lines()
    ds = PackedDataset(tmp_path / "out")
    assert ds.meta["truncated"] == len(too_long) and ds.num_examples == 40
    for eid, (tokens, mask) in all_examples(ds).items():
        full, plen = lengths_by_id[eid]
        want = full[:limit]
        assert tokens == want and len(tokens) == (limit if eid in too_long else len(full))
        assert mask == [0] * plen + [1] * (len(want) - plen)
    assert int(ds.sequence_lengths.max()) == limit


def test_truncate_drops_examples_whose_prompt_leaves_no_room(tmp_path, demo_tokenizer_dir, write_jsonl):
    rows = [{"id": "long", "prompt": "word " * 80, "response": "ok", "answer": "1"},
            {"id": "short", "prompt": "hi", "response": "ok", "answer": "1"}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    s = pack([src], demo_tokenizer_dir, tmp_path / "out", PackOptions(seq_length=40, on_overflow="truncate"))
    assert (s.dropped_overflow, s.truncated, s.num_examples) == (1, 0, 1)
    assert PackedDataset(tmp_path / "out").ids == ["short"]


# ---- the training view of a bin ------------------------------------------------------------------
def test_packed_bins_items(demo_packed):
    ds = PackedDataset(demo_packed[0])
    bins = PackedBins(ds)
    assert len(bins) == ds.num_bins
    S = ds.seq_length
    checked = 0
    for b in range(ds.num_bins):
        r = ds.bin_range(b)
        if len(r) < 2:
            continue
        item = bins[b]
        seqs = [ds.read_example(i) for i in r]
        masks = [ds.read_example(i, "loss_mask") for i in r]
        lens = [len(s) for s in seqs]
        cu = np.concatenate([[0], np.cumsum(lens)])
        used = int(cu[-1])
        assert item["cu_seqlens"].tolist() == cu.tolist() + ([S] if used < S else [])
        assert item["tokens"].shape == (S,) and item["tokens"].dtype == torch.int64
        assert (item["tokens"][used:] == ds.pad_id).all() and (item["loss_weight"][used:] == 0).all()
        for k, (seq, m) in enumerate(zip(seqs, masks)):
            a, e = int(cu[k]), int(cu[k + 1])
            assert item["tokens"][a:e].tolist() == seq.tolist()
            assert item["labels"][a : e - 1].tolist() == seq[1:].tolist()  # next token, inside the example
            assert item["loss_weight"][a : e - 1].tolist() == m[1:].astype(np.float32).tolist()
            assert item["loss_weight"][e - 1] == 0  # the last token predicts nothing across the boundary
            assert item["position_ids"][a:e].tolist() == list(range(e - a))
            assert item["segment_ids"][a:e].tolist() == [k] * (e - a)
            assert item["example_ids"][a:e].tolist() == [r.start + k] * (e - a)
        assert float(item["loss_weight"].sum()) == sum(int(m[1:].sum()) for m in masks)
        checked += 1
    assert checked >= 10


def test_block_causal_mask_is_a_per_example_causal_mask(demo_packed):
    ds = PackedDataset(demo_packed[0])
    b = next(b for b in range(ds.num_bins) if len(ds.bin_range(b)) >= 3)
    item = PackedBins(ds)[b]
    mask = block_causal_mask(item["segment_ids"].unsqueeze(0))
    S = ds.seq_length
    assert mask.shape == (1, 1, S, S) and mask.dtype == torch.bool
    cu = item["cu_seqlens"].tolist()
    allowed = torch.zeros(S, S, dtype=torch.bool)
    for a, e in zip(cu[:-1], cu[1:]):  # padding is its own segment in cu_seqlens
        allowed[a:e, a:e] = torch.ones(e - a, e - a, dtype=torch.bool).tril()
    assert torch.equal(mask[0, 0], ~allowed)

    # attention over the packed bin under this mask equals causal attention over each example alone
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, S, 8) for _ in range(3))
    packed = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=~mask)
    for a, e in zip(cu[:-1], cu[1:]):
        alone = torch.nn.functional.scaled_dot_product_attention(
            q[..., a:e, :], k[..., a:e, :], v[..., a:e, :], is_causal=True
        )
        torch.testing.assert_close(packed[..., a:e, :], alone, rtol=1e-5, atol=1e-5)


def test_collate_offsets_cu_seqlens(demo_packed):
    ds = PackedDataset(demo_packed[0])
    bins = PackedBins(ds)
    a, b = bins[0], bins[1]
    batch = collate([a, b])
    S = ds.seq_length
    assert batch["tokens"].shape == (2, S)
    assert batch["cu_seqlens"].tolist() == a["cu_seqlens"].tolist() + (b["cu_seqlens"][1:] + S).tolist()
    assert batch["cu_seqlens"][-1] == 2 * S


def test_meta_records_absolute_sources_whatever_the_working_directory(tmp_path, demo_records, demo_tokenizer_dir,
                                                                    write_jsonl, monkeypatch):
    """A dataset's provenance must not depend on where `t3s data pack` ran from."""
    write_jsonl(tmp_path / "in" / "a.jsonl", demo_records[:4])
    monkeypatch.chdir(tmp_path)
    pack(["in/a.jsonl"], demo_tokenizer_dir, "out", PackOptions(seq_length=400))
    ds = PackedDataset(tmp_path / "out")
    assert ds.meta["source"]["inputs"] == [str(tmp_path / "in" / "a.jsonl")]
    assert ds.meta["tokenizer"]["source"] == os.path.abspath(demo_tokenizer_dir)
