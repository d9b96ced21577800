"""Reading distillation examples (prompt, response, answer) from JSONL files or a local HF dataset.

JSONL is parsed here rather than through `datasets.load_dataset("json")` because a user with a broken
line needs the file and line number, which the Arrow JSON reader does not report.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from t3s_nemo.errors import T3SError


@dataclass(frozen=True)
class Fields:
    prompt: str = "prompt"
    response: str = "response"
    answer: str = "answer"  # "" = the input has no gold answers
    messages: str = "messages"
    id: str = "id"
    # how errors name the settings: "cli" for `t3s data pack` flags, "config" for a run's data.* keys
    # (`t3s sft` packs data.input itself)
    options: str = "cli"

    def option(self, name: str, value: Optional[str] = None) -> str:
        """A packing setting as the user gives it: `--seq-length 30` to `t3s data pack`, `data.seq_length=30`
        in a run's config."""
        if self.options == "config":
            key = "data." + name.replace("-", "_")
            return key if value is None else f"{key}={value}"
        return f"--{name}" if value is None else f"--{name} {value}"


@dataclass
class Record:
    """One validated input example, before templating."""

    id: str
    messages: list[dict]  # [..., {"role": "assistant", "content": response}]
    answer: Optional[str]
    source: str  # "file:line" (or "dir:row N") for error messages
    is_chat: bool  # came as a messages list


def input_files(inputs: list[str | Path]) -> list[Path]:
    """Expand each input into JSONL files or a datasets directory; errors name the path."""
    out: list[Path] = []
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            raise T3SError(f"{p}: input not found")
        if p.is_dir():
            if _is_hf_dataset_dir(p):
                out.append(p)
                continue
            files = sorted(p.glob("*.jsonl"))
            if not files:
                raise T3SError(f"{p}: directory holds no *.jsonl files and is not a saved HF dataset")
            out.extend(files)
        else:
            out.append(p)
    return out


def _is_hf_dataset_dir(p: Path) -> bool:
    return (p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists() or (p / "state.json").exists()


def iter_raw(path: Path) -> Iterator[tuple[str, dict]]:
    """(location, record dict) for each non-blank line of a JSONL file or row of a saved HF dataset."""
    if path.is_dir():
        yield from _iter_hf(path)
        return
    n = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise T3SError(f"{where}: invalid UTF-8 (byte {e.start} of the line)") from None
            if not line.strip():
                continue
            try:
                # without the newline, a truncated line fails on its own line, not at "line 2 column 1"
                obj = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                raise T3SError(f"{where}: malformed JSON: {e.msg} (column {e.colno})") from None
            if not isinstance(obj, dict):
                raise T3SError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            n += 1
            yield where, obj
    if n == 0:
        raise T3SError(f"{path}: no examples (empty file)")


def _iter_hf(path: Path) -> Iterator[tuple[str, dict]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises FileNotFoundError / ValueError variants
        raise T3SError(f"{path}: cannot open as a saved HF dataset: {str(e).splitlines()[0]}") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" in ds:
            ds = ds["train"]
        elif len(ds) == 1:
            ds = next(iter(ds.values()))
        else:
            raise T3SError(f"{path}: dataset has splits {sorted(ds)}; expected one or a 'train' split")
    if len(ds) == 0:
        raise T3SError(f"{path}: no examples (empty dataset)")
    for i, row in enumerate(ds):
        yield f"{path}:row {i + 1}", row


def _text(obj: dict, key: str, where: str, fields: Fields) -> str:
    if key not in obj:
        kind = "prompt" if key == fields.prompt else "response"
        found = ", ".join(repr(k) for k in list(obj)[:12]) or "none"
        raise T3SError(f"{where}: missing field '{key}' (the {kind}; name the fields with "
                       f"{fields.option('prompt-field')} and {fields.option('response-field')}, or give a chat "
                       f"list in '{fields.messages}' ({fields.option('messages-field')}); found: {found})")
    value = obj[key]
    if not isinstance(value, str):
        raise T3SError(f"{where}: field '{key}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise T3SError(f"{where}: field '{key}' is empty")
    return value


def _answer(obj: dict, key: str, where: str, fields: Fields) -> Optional[str]:
    if not key:
        return None
    if key not in obj:
        raise T3SError(f"{where}: missing field '{key}' (the gold answer; {fields.option('answer-field')} names "
                       f"it, {fields.option('answer-field', repr(''))} if there is none)")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise T3SError(f"{where}: field '{key}' must be a string or number, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):  # Python's json reads NaN and Infinity
        raise T3SError(f"{where}: field '{key}' is {value}; a gold answer must be a finite number or a string")
    value = str(value)
    if not value.strip():
        raise T3SError(f"{where}: field '{key}' is empty")
    return value


def _messages(obj: dict, key: str, where: str) -> list[dict]:
    msgs = obj[key]
    if not isinstance(msgs, list) or not msgs:
        raise T3SError(f"{where}: field '{key}' must be a non-empty list of {{role, content}} objects")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise T3SError(f"{where}: field '{key}[{i}]' must be an object with string 'role' and 'content'")
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "assistant":
        raise T3SError(f"{where}: field '{key}': the last message must have role 'assistant' (the response)")
    if len(out) < 2:
        raise T3SError(f"{where}: field '{key}': needs at least one message before the assistant response")
    if not out[-1]["content"].strip():
        raise T3SError(f"{where}: field '{key}': the assistant response is empty")
    return out


def read_records(inputs: list[str | Path], fields: Fields = Fields()) -> Iterator[Record]:
    """Validated records from all inputs, in order; ids default to the record's position."""
    seen: dict[str, str] = {}
    index = 0
    for path in input_files(inputs):
        for where, obj in iter_raw(path):
            # None: a row of a saved HF dataset that mixes chat and prompt/response examples
            if fields.messages and obj.get(fields.messages) is not None:
                messages, is_chat = _messages(obj, fields.messages, where), True
            else:
                prompt = _text(obj, fields.prompt, where, fields)
                response = _text(obj, fields.response, where, fields)
                messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
                is_chat = False
            answer = _answer(obj, fields.answer, where, fields)
            rid = obj.get(fields.id) if fields.id else None
            if rid is None:
                rid = f"ex-{index:08d}"
            elif isinstance(rid, bool) or not isinstance(rid, (str, int)):
                raise T3SError(f"{where}: field '{fields.id}' must be a string or integer")
            rid = str(rid)
            if rid in seen:
                raise T3SError(f"{where}: duplicate id '{rid}' (first seen at {seen[rid]})")
            seen[rid] = where
            index += 1
            yield Record(id=rid, messages=messages, answer=answer, source=where, is_chat=is_chat)

