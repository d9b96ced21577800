"""`t3s data pack`: tokenize distillation examples and pack them into bins of seq_length tokens.

Two passes keep memory flat for large sets: pass 1 tokenizes every example into a temporary unpacked
indexed dataset (recording lengths); pass 2 assigns examples to bins by first-fit-decreasing and writes
the channels bin by bin, reading examples back from the memory-mapped temporary file.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

import t3s_nemo
from t3s_nemo.console import progress
from t3s_nemo.data import indexed
from t3s_nemo.data.packed import FORMAT, FORMAT_VERSION, channel_prefix
from t3s_nemo.data.source import Fields, Record, input_files, read_records
from t3s_nemo.data.tokenizer import fingerprint, load_tokenizer, pad_id
from t3s_nemo.errors import T3SError
from t3s_nemo.io import atomic_write_json, staged_dir

TOKENIZE_CHUNK = 512


@dataclass
class PackOptions:
    seq_length: int
    on_overflow: str = "error"  # error | drop | truncate
    template: str = "auto"  # auto | chat | plain
    fields: Fields = field(default_factory=Fields)
    system_prompt: str = ""
    overwrite: bool = False


@dataclass
class PackSummary:
    output: Path
    num_examples: int
    num_bins: int
    num_tokens: int
    response_tokens: int
    dropped_overflow: int
    truncated: int
    fill: float  # tokens / (bins * seq_length)
    seconds: float
    template: str

    def lines(self) -> list[str]:
        out = [
            f"packed {self.num_examples} examples ({self.num_tokens:,} tokens, "
            f"{self.response_tokens:,} response tokens) into {self.num_bins} bins",
            f"bin fill {self.fill:.1%}, template {self.template}, {self.seconds:.1f}s",
        ]
        if self.dropped_overflow:
            out.append(f"dropped {self.dropped_overflow} examples longer than seq_length")
        if self.truncated:
            out.append(f"truncated {self.truncated} examples to seq_length")
        return out


def first_fit_decreasing(lengths: np.ndarray, capacity: int) -> list[list[int]]:
    """Bins of item indices, first-fit over items sorted by decreasing length (stable on ties).

    A segment tree over bins' remaining capacity finds the leftmost bin with room in O(log n), so
    packing a million examples takes seconds; the `binpacking` package's greedy is O(n * bins).
    """
    n = len(lengths)
    if n == 0:
        return []
    lengths = np.asarray(lengths)
    if lengths.max() > capacity or lengths.min() < 0:
        # the descent below would silently put an oversized item into the last bin
        raise ValueError(f"item lengths must be in 0..{capacity}, got {lengths.min()}..{lengths.max()}")
    size = 1
    while size < n:
        size *= 2
    tree = np.zeros(2 * size, dtype=np.int64)
    tree[size : size + n] = capacity
    for i in range(size - 1, 0, -1):
        tree[i] = max(tree[2 * i], tree[2 * i + 1])
    bins: list[list[int]] = []
    for item in np.argsort(-lengths, kind="stable"):
        need = int(lengths[item])
        node = 1
        while node < size:  # descend to the leftmost leaf with room
            node = 2 * node if tree[2 * node] >= need else 2 * node + 1
        b = node - size
        if b == len(bins):
            bins.append([])
        bins[b].append(int(item))
        tree[node] -= need
        node //= 2
        while node:
            tree[node] = max(tree[2 * node], tree[2 * node + 1])
            node //= 2
    return bins


class _Renderer:
    """Turns a record into (prompt text, response text) with the tokenizer's chat template or plainly."""

    def __init__(self, tok, template: str, system_prompt: str, option=Fields().option):
        has_template = bool(getattr(tok, "chat_template", None))
        self.auto_plain = template == "auto" and not has_template
        if template == "auto":
            template = "chat" if has_template else "plain"
        if template == "chat" and not has_template:
            raise T3SError(
                f"tokenizer {tok.name_or_path} has no chat template: chat formatting needs one "
                f"(use a chat tokenizer, or {option('template', 'plain')} with prompt/response fields)"
            )
        self.tok = tok
        self.option = option
        self.template = template
        self.system_prompt = system_prompt

    def __call__(self, rec: Record) -> tuple[str, str]:
        if self.template == "plain":
            if rec.is_chat and self.auto_plain:
                raise T3SError(
                    f"{rec.source}: chat-format example (messages) needs a chat template, but tokenizer "
                    f"{self.tok.name_or_path} has none (use a chat tokenizer, or prompt/response fields)"
                )
            if rec.is_chat:
                raise T3SError(
                    f"{rec.source}: chat-format example (messages) but {self.option('template', 'plain')}; "
                    f"use {self.option('template', 'chat')}"
                )
            bos = self.tok.bos_token or ""
            return bos + rec.messages[0]["content"], rec.messages[-1]["content"] + self.tok.eos_token
        messages = rec.messages
        if self.system_prompt and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.system_prompt}] + messages
        try:
            prompt = self.tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
            full = self.tok.apply_chat_template(messages, tokenize=False)
        except Exception as e:  # jinja errors from the user's template
            raise T3SError(f"{rec.source}: the chat template failed: {str(e).splitlines()[0]}") from None
        if not full.startswith(prompt):
            hint = "check the template"
            if prompt.rstrip().endswith("<think>"):
                hint = (
                    "its generation prompt opens <think>, which a finished assistant turn does not repeat, "
                    "as QwQ's and DeepSeek-R1's templates do; pack with the student's tokenizer, e.g. Qwen3's"
                )
            raise T3SError(
                f"{rec.source}: the chat template renders the prompt differently inside the full "
                f"conversation, so the response tokens cannot be separated ({hint})"
            )
        response = full[len(prompt) :]
        reasoning = _reasoning(rec.messages[-1]["content"])
        if reasoning and reasoning not in response:
            raise T3SError(
                f"{rec.source}: the chat template drops the reasoning (the text before </think>) from the "
                "assistant turn, so the student would learn the final answers only (templates of QwQ and "
                "DeepSeek-R1 distills do this); pack with the student's tokenizer, e.g. Qwen3's, whose "
                f"template keeps the last turn's reasoning, or use {self.option('template', 'plain')}"
            )
        return prompt, response


def _reasoning(content: str) -> str:
    """The teacher's reasoning in a response: the text before `</think>` (after `<think>` if it opens one;
    QwQ and R1 traces often lack the opening tag, which their generation prompt supplied)."""
    if "</think>" not in content:
        return ""
    return content.split("</think>")[0].split("<think>")[-1].strip()


def _chunks(it: Iterable[Record], n: int) -> Iterable[list[Record]]:
    buf: list[Record] = []
    for x in it:
        buf.append(x)
        if len(buf) == n:
            yield buf
            buf = []
    if buf:
        yield buf


def _source_hash(inputs: list[Path]) -> str:
    h = hashlib.sha256()
    for p in inputs:
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        for f in files:
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return "sha256:" + h.hexdigest()[:32]


def pack(inputs: list[str | Path], tokenizer_dir: str | Path, output: str | Path, opts: PackOptions) -> PackSummary:
    """Pack JSONL / HF-dataset examples into a t3s packed dataset at `output` (atomically)."""
    t0 = time.time()
    option = opts.fields.option
    if opts.seq_length < 2:
        raise T3SError(f"{option('seq-length')} must be at least 2, got {opts.seq_length}")
    if opts.on_overflow not in ("error", "drop", "truncate"):
        raise T3SError(f"{option('on-overflow')} '{opts.on_overflow}': expected error, drop or truncate")
    if opts.template not in ("auto", "chat", "plain"):
        raise T3SError(f"{option('template')} '{opts.template}': expected auto, chat or plain")
    files = input_files(inputs)
    tok = load_tokenizer(tokenizer_dir)
    render = _Renderer(tok, opts.template, opts.system_prompt, option)
    output = Path(output)

    with staged_dir(output, overwrite=opts.overwrite, inputs=[*inputs, *files, tokenizer_dir]) as tmp:
        # Pass 1: tokenize into an unpacked temporary dataset, in input order.
        scratch = str(tmp / "_unpacked")
        builder = indexed.IndexedWriter(scratch, np.int32)
        ids, answers, prompt_lens, lengths, sources = [], [], [], [], []
        dropped = truncated = 0
        with progress() as bar, builder:  # closes the .bin on an error too
            task = bar.add_task("tokenizing", total=None)
            for chunk in _chunks(read_records(files, opts.fields), TOKENIZE_CHUNK):
                rendered = [render(r) for r in chunk]
                # verbose=False: lengths are checked against --seq-length below, not the tokenizer's
                # model_max_length, which transformers would warn about once per run
                p_ids = tok([p for p, _ in rendered], add_special_tokens=False, verbose=False)["input_ids"]
                r_ids = tok([r for _, r in rendered], add_special_tokens=False, verbose=False)["input_ids"]
                for rec, p, r in zip(chunk, p_ids, r_ids):
                    if not r:
                        raise T3SError(f"{rec.source}: the response tokenizes to nothing")
                    n = len(p) + len(r)
                    if n > opts.seq_length:
                        if opts.on_overflow == "error":
                            raise T3SError(
                                f"{rec.source}: example '{rec.id}' has {n} tokens, more than "
                                f"{option('seq-length', str(opts.seq_length))} (use {option('on-overflow', 'drop')} "
                                "or truncate)"
                            )
                        if opts.on_overflow == "drop" or len(p) >= opts.seq_length - 1:
                            dropped += 1
                            continue
                        r = r[: opts.seq_length - len(p)]
                        truncated += 1
                    seq = np.asarray(p + r, dtype=np.int32)
                    builder.add_item(seq)
                    builder.end_document()
                    ids.append(rec.id)
                    answers.append(rec.answer)
                    prompt_lens.append(len(p))
                    lengths.append(len(seq))
                    sources.append(rec.source)
                bar.advance(task, len(chunk))
        builder.finalize()
        if not ids:
            raise T3SError(f"no examples left to pack (all were dropped as longer than {option('seq-length')})")

        # Pass 2: first-fit-decreasing bins, written channel by channel in bin order.
        lengths_np = np.asarray(lengths, dtype=np.int64)
        bins = first_fit_decreasing(lengths_np, opts.seq_length)
        order = [i for b in bins for i in b]
        unpacked = indexed.IndexedReader(scratch)
        response_tokens = write_bins(tmp, bins, unpacked.__getitem__, prompt_lens)
        del unpacked
        for suffix in (".bin", ".idx"):
            (tmp / f"_unpacked{suffix}").unlink()

        tok.save_pretrained(str(tmp / "tokenizer"))
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_by": f"t3s-nemo {t3s_nemo.__version__}",
            "seq_length": opts.seq_length,
            "template": render.template,
            "tokenizer": {
                "source": os.path.abspath(tokenizer_dir),  # provenance: where it came from, not where it is
                "fingerprint": fingerprint(tok),
                "vocab_size": len(tok),
                "eos_id": tok.eos_token_id,
                "pad_id": pad_id(tok),
            },
            "source": {"inputs": [os.path.abspath(p) for p in files], "hash": _source_hash(files)},
            "num_examples": len(order),
            "num_bins": len(bins),
            "num_tokens": int(lengths_np.sum()),
            "response_tokens": response_tokens,
            "dropped_overflow": dropped,
            "truncated": truncated,
            "channels": {"tokens": {"dtype": "int32"}, "loss_mask": {"dtype": "uint8"}},
            "examples": {
                "id": [ids[i] for i in order],
                "answer": [answers[i] for i in order],
                "prompt_length": [prompt_lens[i] for i in order],
                "source": [sources[i] for i in order],
            },
        }
        atomic_write_json(tmp / "meta.json", meta, indent=None)

    return PackSummary(
        output=output,
        num_examples=len(order),
        num_bins=len(bins),
        num_tokens=int(lengths_np.sum()),
        response_tokens=response_tokens,
        dropped_overflow=dropped,
        truncated=truncated,
        fill=float(lengths_np.sum()) / (len(bins) * opts.seq_length),
        seconds=time.time() - t0,
        template=render.template,
    )


def write_bins(out_dir: Path, bins: list[list[int]], get_tokens: Callable[[int], np.ndarray], prompt_lens) -> int:
    """Write the tokens and loss_mask channels, one document per bin; returns the response-token count."""
    tokens_out = indexed.IndexedWriter(channel_prefix(out_dir, "tokens"), np.int32)
    mask_out = indexed.IndexedWriter(channel_prefix(out_dir, "loss_mask"), np.uint8)
    response_tokens = 0
    with progress() as bar:
        task = bar.add_task("packing", total=len(bins))
        for b in bins:
            seqs = [get_tokens(i) for i in b]
            masks = []
            for i, s in zip(b, seqs):
                m = np.zeros(len(s), dtype=np.uint8)
                m[prompt_lens[i] :] = 1
                response_tokens += len(s) - int(prompt_lens[i])
                masks.append(m)
            lens = [len(s) for s in seqs]
            tokens_out.add_document(np.concatenate(seqs), lens)
            mask_out.add_document(np.concatenate(masks), lens)
            bar.advance(task)
    tokens_out.finalize()
    mask_out.finalize()
    return response_tokens
