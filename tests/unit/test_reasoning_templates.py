"""Chat templates and teacher reasoning: Qwen3's template keeps a trace's reasoning in the trained response
whether the trace opens `<think>` (R1 style) or not (QwQ style, whose generation prompt opened it); a
template that strips the reasoning from assistant turns (QwQ's, DeepSeek-R1 distills') is refused with a
message that names the example, instead of packing answers only."""

from __future__ import annotations

import json
import shutil

import pytest

from t3s_nemo.data.pack import PackOptions, pack
from t3s_nemo.data.packed import PackedDataset
from t3s_nemo.data.tokenizer import load_tokenizer
from t3s_nemo.errors import T3SError

# Qwen3's chat template (Qwen/Qwen3-8B tokenizer_config.json) without its tool-calling branches.
QWEN3 = (
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}"
    "{%- for message in messages[::-1] %}{%- set index = (messages|length - 1) - loop.index0 %}"
    "{%- if ns.multi_step_tool and message.role == 'user' %}"
    "{%- set ns.multi_step_tool = false %}{%- set ns.last_query_index = index %}{%- endif %}{%- endfor %}"
    "{%- for message in messages %}{%- set content = message.content %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == 'assistant' %}{%- set reasoning_content = '' %}"
    "{%- if '</think>' in content %}"
    "{%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
    "{%- if loop.index0 > ns.last_query_index %}"
    "{%- if loop.last or (not loop.last and reasoning_content) %}"
    "{{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n'"
    " + content.lstrip('\\n') }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + content }}{%- endif %}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + content }}{%- endif %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}"
)

# Templates that keep only the text after </think> in every assistant turn: QwQ's opens <think> in its
# generation prompt; early DeepSeek-R1 distills' did not.
_STRIP = (
    "{%- for message in messages %}{%- if message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' + message.content.split('</think>')[-1].lstrip('\\n') + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
)
QWQ = _STRIP + "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n<think>\\n' }}{%- endif %}"
R1_DISTILL = _STRIP + "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"

REASONING = "Add 2 and 2.\nWait, check: 2 + 2 = 4."
R1_STYLE = {"id": "r1", "prompt": "What is 2 + 2?", "response": f"<think>\n{REASONING}\n</think>\n\nIt is \\boxed{{4}}.",
            "answer": "4"}
QWQ_STYLE = {"id": "qwq", "prompt": "What is 3 + 3?", "response": f"{REASONING}\n</think>\n\nIt is \\boxed{{6}}.",
             "answer": "6"}


def tokenizer_with(tmp_path, demo_tokenizer_dir, template: str):
    out = tmp_path / "tok"
    shutil.copytree(demo_tokenizer_dir, out)
    (out / "chat_template.jinja").write_text(template)
    return out


def write(tmp_path, rows):
    src = tmp_path / "traces.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return src


def trained_text(ds: PackedDataset, tok, i: int) -> str:
    ids, mask = ds.read_example(i).tolist(), ds.read_example(i, "loss_mask").tolist()
    return tok.decode([t for t, m in zip(ids, mask) if m])


def test_qwen3_template_trains_on_the_reasoning_of_r1_and_qwq_traces(tmp_path, demo_tokenizer_dir):
    tok_dir = tokenizer_with(tmp_path, demo_tokenizer_dir, QWEN3)
    out = tmp_path / "ds"
    pack([write(tmp_path, [R1_STYLE, QWQ_STYLE])], tok_dir, out, PackOptions(seq_length=256))
    ds, tok = PackedDataset(out), load_tokenizer(tok_dir)
    texts = {eid: trained_text(ds, tok, i) for i, eid in enumerate(ds.ids)}
    # both traces become Qwen3's thinking format: the reasoning is in the trained tokens, opened by <think>
    assert texts["r1"] == f"<think>\n{REASONING}\n</think>\n\nIt is \\boxed{{4}}.<|im_end|>\n"
    assert texts["qwq"] == f"<think>\n{REASONING}\n</think>\n\nIt is \\boxed{{6}}.<|im_end|>\n"


@pytest.mark.parametrize("name", ["qwq", "r1_distill"])
def test_a_template_that_drops_reasoning_is_refused(tmp_path, demo_tokenizer_dir, name):
    tok_dir = tokenizer_with(tmp_path, demo_tokenizer_dir, {"qwq": QWQ, "r1_distill": R1_DISTILL}[name])
    src = write(tmp_path, [R1_STYLE])
    parent = tmp_path / "out"
    parent.mkdir()
    with pytest.raises(T3SError) as info:
        pack([src], tok_dir, parent / "ds", PackOptions(seq_length=256))
    msg = str(info.value)
    if name == "qwq":  # the prompt ends in <think>, which the finished turn does not repeat
        assert msg == (
            f"{src}:1: the chat template renders the prompt differently inside the full conversation, so the "
            "response tokens cannot be separated (its generation prompt opens <think>, which a finished "
            "assistant turn does not repeat, as QwQ's and DeepSeek-R1's templates do; pack with the student's "
            "tokenizer, e.g. Qwen3's)"
        )
    else:  # renders consistently, but would train on the final answer alone
        assert msg.startswith(f"{src}:1: the chat template drops the reasoning (the text before </think>)")
    assert list(parent.iterdir()) == []
    if name == "r1_distill":  # responses without reasoning still pack with it: the check is about reasoning
        plain = write(tmp_path, [{"id": "a", "prompt": "What is 1 + 1?", "response": "It is 2.", "answer": "2"}])
        assert pack([plain], tok_dir, parent / "ds", PackOptions(seq_length=256)).num_examples == 1
