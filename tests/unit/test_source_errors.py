"""Every bad input to `data pack` is refused with one line naming the file and line (or row) and the
field, and leaves no output directory and no temporary directory behind."""

from __future__ import annotations

import json
import re

import pytest

from t3s_nemo.data.pack import PackOptions, pack
from t3s_nemo.data.source import Fields, read_records
from t3s_nemo.errors import T3SError

GOOD = {"id": "g1", "prompt": "What is 1 + 1?", "response": "It is 2.", "answer": "2"}
GOOD2 = {"id": "g2", "prompt": "What is 2 + 2?", "response": "It is 4.", "answer": "4"}


def chat_row(msgs, **extra):
    return {"messages": msgs, "answer": "1", **extra}


USER = {"role": "user", "content": "hi"}
BOT = {"role": "assistant", "content": "1"}

# name: (lines of in.jsonl (dicts, str, or bytes for the whole file), PackOptions kwargs, message template)
CASES = {
    "malformed_json": (
        [GOOD, GOOD2, '{"prompt": "x",'], {},
        "{src}:3: malformed JSON: Expecting property name enclosed in double quotes (column 16)",
    ),
    "not_an_object": ([GOOD, "[1, 2]"], {}, "{src}:2: expected a JSON object, got list"),
    "missing_field": (
        [GOOD, {"id": "x", "prompt": "p", "answer": "1"}], {},
        "{src}:2: missing field 'response' (the response; name the fields with --prompt-field and "
        "--response-field, or give a chat list in 'messages' (--messages-field); found: 'id', 'prompt', 'answer')",
    ),
    "empty_field": ([{**GOOD, "prompt": "   "}], {}, "{src}:1: field 'prompt' is empty"),
    "ill_typed_field": ([GOOD, {**GOOD2, "response": ["a"]}], {}, "{src}:2: field 'response' must be a string, got list"),
    "ill_typed_answer": ([{**GOOD, "answer": True}], {}, "{src}:1: field 'answer' must be a string or number, got bool"),
    "nan_answer": (['{"prompt": "p", "response": "r", "answer": NaN}'], {},
                   "{src}:1: field 'answer' is nan; a gold answer must be a finite number or a string"),
    "empty_answer": ([{**GOOD, "answer": ""}], {}, "{src}:1: field 'answer' is empty"),
    "missing_answer": (
        [{"prompt": "p", "response": "r"}], {},
        "{src}:1: missing field 'answer' (the gold answer; --answer-field names it, --answer-field '' if there is none)",
    ),
    "renamed_field_missing": (
        [GOOD], {"fields": Fields(prompt="question")},
        "{src}:1: missing field 'question' (the prompt; name the fields with --prompt-field and --response-field, "
        "or give a chat list in 'messages' (--messages-field); found: 'id', 'prompt', 'response', 'answer')"
    ),
    # `t3s sft` packs data.input itself: its errors name the config keys, not `t3s data pack`'s flags
    "config_missing_answer": (
        [{"prompt": "p", "response": "r"}], {"fields": Fields(options="config")},
        "{src}:1: missing field 'answer' (the gold answer; data.answer_field names it, data.answer_field='' if "
        "there is none)",
    ),
    "config_too_long": (
        [GOOD, {**GOOD2, "response": "word " * 40}], {"seq_length": 30, "fields": Fields(options="config")},
        "{src}:2: example 'g2' has {n} tokens, more than data.seq_length=30 (use data.on_overflow=drop or truncate)",
    ),
    "config_seq_length_too_small": ([GOOD], {"seq_length": 1, "fields": Fields(options="config")},
                                    "data.seq_length must be at least 2, got 1"),
    "ill_typed_id": ([{**GOOD, "id": [1]}], {}, "{src}:1: field 'id' must be a string or integer"),
    "duplicate_id": ([GOOD, GOOD2, {**GOOD2, "id": "g1"}], {}, "{src}:3: duplicate id 'g1' (first seen at {src}:1)"),
    "invalid_utf8": (
        b'{"prompt": "ok", "response": "ok", "answer": "1"}\n{"prompt": "caf\xe9", "response": "r", "answer": "1"}\n',
        {}, "{src}:2: invalid UTF-8 (byte 15 of the line)",
    ),
    "empty_file": (b"", {}, "{src}: no examples (empty file)"),
    "blank_lines_only": (b"\n  \n\n", {}, "{src}: no examples (empty file)"),
    "messages_not_a_list": (
        [chat_row("hi")], {}, "{src}:1: field 'messages' must be a non-empty list of {{role, content}} objects"
    ),
    "messages_bad_item": (
        [chat_row([USER, {"role": "assistant"}])], {},
        "{src}:1: field 'messages[1]' must be an object with string 'role' and 'content'",
    ),
    "messages_last_not_assistant": (
        [chat_row([BOT, USER])], {}, "{src}:1: field 'messages': the last message must have role 'assistant' (the response)"
    ),
    "messages_only_response": (
        [chat_row([BOT])], {}, "{src}:1: field 'messages': needs at least one message before the assistant response"
    ),
    "messages_empty_response": (
        [chat_row([USER, {"role": "assistant", "content": " "}])], {},
        "{src}:1: field 'messages': the assistant response is empty",
    ),
    "messages_with_plain_template": (
        [chat_row([USER, BOT])], {"template": "plain"},
        "{src}:1: chat-format example (messages) but --template plain; use --template chat",
    ),
    "too_long": (
        [GOOD, {**GOOD2, "response": "word " * 40}], {"seq_length": 30},
        "{src}:2: example 'g2' has {n} tokens, more than --seq-length 30 (use --on-overflow drop or truncate)",
    ),
    "all_dropped": (
        [{**GOOD, "response": "word " * 40}], {"seq_length": 30, "on_overflow": "drop"},
        "no examples left to pack (all were dropped as longer than --seq-length)",
    ),
    "seq_length_too_small": ([GOOD], {"seq_length": 1}, "--seq-length must be at least 2, got 1"),
    "bad_on_overflow": ([GOOD], {"on_overflow": "skip"}, "--on-overflow 'skip': expected error, drop or truncate"),
}


def output_parent(tmp_path):
    parent = tmp_path / "out"
    parent.mkdir()
    return parent


def write_input(tmp_path, content):
    src = tmp_path / "in.jsonl"
    if isinstance(content, bytes):
        src.write_bytes(content)
    else:
        src.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in content))
    return src


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_naming_file_and_field(tmp_path, demo_tokenizer_dir, demo_tokenizer, case):
    content, kwargs, template = CASES[case]
    src = write_input(tmp_path, content)
    parent = output_parent(tmp_path)
    opts = PackOptions(**{"seq_length": 256, **kwargs})
    with pytest.raises(T3SError) as info:
        pack([src], demo_tokenizer_dir, parent / "ds", opts)
    msg = str(info.value)
    if case.endswith("too_long"):
        n = len(demo_tokenizer.apply_chat_template(
            [{"role": "user", "content": GOOD2["prompt"]}, {"role": "assistant", "content": "word " * 40}],
            tokenize=True, return_dict=True)["input_ids"])
        assert n > 30
        assert msg == template.format(src=src, n=n)
    else:
        assert msg == template.format(src=src)
    assert "\n" not in msg
    assert list(parent.iterdir()) == []  # no output and no staged temporary directory


def test_chat_examples_with_a_tokenizer_without_chat_template(tmp_path, no_chat_tokenizer_dir):
    src = write_input(tmp_path, [chat_row([USER, BOT])])
    parent = output_parent(tmp_path)
    with pytest.raises(T3SError) as info:
        pack([src], no_chat_tokenizer_dir, parent / "ds", PackOptions(seq_length=64))
    assert str(info.value) == (
        f"{src}:1: chat-format example (messages) needs a chat template, but tokenizer {no_chat_tokenizer_dir} "
        "has none (use a chat tokenizer, or prompt/response fields)"
    )
    with pytest.raises(T3SError) as info:
        pack([src], no_chat_tokenizer_dir, parent / "ds", PackOptions(seq_length=64, template="chat"))
    assert str(info.value) == (
        f"tokenizer {no_chat_tokenizer_dir} has no chat template: chat formatting needs one "
        "(use a chat tokenizer, or --template plain with prompt/response fields)"
    )
    assert list(parent.iterdir()) == []


def test_prompt_response_examples_pack_plainly_without_chat_template(tmp_path, no_chat_tokenizer_dir):
    src = write_input(tmp_path, [GOOD])
    s = pack([src], no_chat_tokenizer_dir, tmp_path / "ds", PackOptions(seq_length=64))
    assert s.template == "plain" and s.num_examples == 1


def test_existing_output_is_refused_and_kept(tmp_path, demo_tokenizer_dir):
    src = write_input(tmp_path, [GOOD])
    parent = output_parent(tmp_path)
    (parent / "ds").mkdir()
    (parent / "ds" / "keep.txt").write_text("mine")
    with pytest.raises(T3SError) as info:
        pack([src], demo_tokenizer_dir, parent / "ds", PackOptions(seq_length=64))
    assert str(info.value) == f"{parent / 'ds'}: output directory exists (pass --overwrite to replace it)"
    assert sorted(p.name for p in parent.iterdir()) == ["ds"]
    assert [p.name for p in (parent / "ds").iterdir()] == ["keep.txt"]
    # --overwrite replaces it whole, again with nothing left beside it
    pack([src], demo_tokenizer_dir, parent / "ds", PackOptions(seq_length=64, overwrite=True))
    assert sorted(p.name for p in parent.iterdir()) == ["ds"]
    assert not (parent / "ds" / "keep.txt").exists() and (parent / "ds" / "meta.json").exists()


def test_failed_overwrite_keeps_the_old_dataset(tmp_path, demo_tokenizer_dir):
    src = write_input(tmp_path, [GOOD])
    parent = output_parent(tmp_path)
    pack([src], demo_tokenizer_dir, parent / "ds", PackOptions(seq_length=64))
    before = (parent / "ds" / "meta.json").read_bytes()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(GOOD) + "\n{oops\n")
    with pytest.raises(T3SError, match=re.escape(f"{bad}:2: malformed JSON")):
        pack([bad], demo_tokenizer_dir, parent / "ds", PackOptions(seq_length=64, overwrite=True))
    assert (parent / "ds" / "meta.json").read_bytes() == before
    assert sorted(p.name for p in parent.iterdir()) == ["ds"]


def test_inputs_that_do_not_exist_or_hold_nothing(tmp_path, demo_tokenizer_dir):
    parent = output_parent(tmp_path)
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(T3SError) as info:
        pack([missing], demo_tokenizer_dir, parent / "ds", PackOptions(seq_length=64))
    assert str(info.value) == f"{missing}: input not found"
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    (empty_dir / "data.json").write_text("{}")
    with pytest.raises(T3SError) as info:
        pack([empty_dir], demo_tokenizer_dir, parent / "ds", PackOptions(seq_length=64))
    assert str(info.value) == f"{empty_dir}: directory holds no *.jsonl files and is not a saved HF dataset"
    assert list(parent.iterdir()) == []


def test_bad_tokenizer_directories(tmp_path):
    src = write_input(tmp_path, [GOOD])
    parent = output_parent(tmp_path)
    with pytest.raises(T3SError) as info:
        pack([src], tmp_path / "no_tok", parent / "ds", PackOptions(seq_length=64))
    assert str(info.value) == f"{tmp_path / 'no_tok'}: tokenizer directory not found"
    (tmp_path / "not_tok").mkdir()
    with pytest.raises(T3SError) as info:
        pack([src], tmp_path / "not_tok", parent / "ds", PackOptions(seq_length=64))
    assert str(info.value) == (
        f"{tmp_path / 'not_tok'}: not a Hugging Face tokenizer directory (no tokenizer.json or tokenizer_config.json)"
    )
    assert list(parent.iterdir()) == []


def test_hf_dataset_errors_name_the_row(tmp_path, demo_tokenizer_dir):
    import datasets

    rows = [GOOD, GOOD2, {**GOOD2, "id": "g3", "prompt": ""}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"))
    parent = output_parent(tmp_path)
    with pytest.raises(T3SError) as info:
        pack([tmp_path / "hf"], demo_tokenizer_dir, parent / "ds", PackOptions(seq_length=64))
    assert str(info.value) == f"{tmp_path / 'hf'}:row 3: field 'prompt' is empty"
    assert list(parent.iterdir()) == []


def test_errors_in_a_later_file_of_a_directory_name_that_file(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.jsonl").write_text(json.dumps(GOOD) + "\n")
    (d / "b.jsonl").write_text(json.dumps(GOOD2) + "\n" + json.dumps({**GOOD, "id": "g3", "response": 3}) + "\n")
    with pytest.raises(T3SError) as info:
        list(read_records([d]))
    assert str(info.value) == f"{d / 'b.jsonl'}:2: field 'response' must be a string, got int"


def test_sft_packing_bad_input_leaves_no_run_directory(tmp_path, write_jsonl):
    """`t3s sft` with data.input packs into run_dir/data first: a bad input is refused with the config
    key to change, and the run directory it would have made is not left behind for a rerun to resume."""
    from pathlib import Path

    from t3s_nemo.config import load_config
    from t3s_nemo.recipes.train import ensure_packed

    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "p", "response": "r"}])
    tiny = Path(__file__).resolve().parents[2] / "configs" / "tiny" / "sft.yaml"
    cfg = load_config(tiny, [f"run_dir={tmp_path / 'runs' / 'a'}", f"data.input={src}"])
    with pytest.raises(T3SError, match=r"in.jsonl:1: missing field 'answer' \(the gold answer; data.answer_field "):
        ensure_packed(cfg, is_main=True)
    assert not (tmp_path / "runs").exists()
