"""Regenerate the bundled demo data and tokenizer under t3s_nemo/assets/demo/ (deterministic).

    python tools/make_demo_data.py

Files written:
  train.jsonl    teacher-style distillation set (prompt, response, answer): what `t3s demo` distils
  student.jsonl  student-style traces of other problems: the pre-training corpus that makes the student
  test.jsonl     held-out problems (problem, answer) for `t3s eval`
  tokenizer/     a byte-level BPE tokenizer trained on the above, with a Qwen-style chat template
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from t3s_nemo.demo import task

ASSETS = Path(__file__).resolve().parents[1] / "t3s_nemo" / "assets" / "demo"

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
THINK = ["<think>", "</think>"]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def build_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    # Digits one by one (as Qwen's tokenizer does), then byte-level BPE for everything else.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in THINK])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ASSETS)
    ap.add_argument("--train", type=int, default=256)
    ap.add_argument("--student", type=int, default=4096)
    ap.add_argument("--test", type=int, default=128)
    ap.add_argument("--vocab-size", type=int, default=512)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    train = task.make_split(seed=1, n=args.train)
    test = task.make_split(seed=2, n=args.test, exclude={p.key for p in train})
    student = task.make_split(seed=3, n=args.student, exclude={p.key for p in train + test})

    rng = random.Random(4)
    train_rows = [
        {"id": f"train-{i:04d}", "prompt": task.prompt_text(p), "response": task.teacher_response(p, rng),
         "answer": str(p.answer)}
        for i, p in enumerate(train)
    ]
    student_rows = [
        {"id": f"student-{i:05d}", "prompt": task.prompt_text(p), "response": task.student_response(p),
         "answer": str(p.answer)}
        for i, p in enumerate(student)
    ]
    test_rows = [{"id": f"test-{i:04d}", "problem": task.prompt_text(p), "answer": str(p.answer)}
                 for i, p in enumerate(test)]
    write_jsonl(args.out / "train.jsonl", train_rows)
    write_jsonl(args.out / "student.jsonl", student_rows)
    write_jsonl(args.out / "test.jsonl", test_rows)

    # Train on chat-formatted text so the template's own words ("user", "assistant") become tokens.
    texts = [
        f"<|im_start|>user\n{r['prompt']}<|im_end|>\n<|im_start|>assistant\n{r['response']}<|im_end|>\n"
        for r in train_rows + student_rows
    ]
    tok = build_tokenizer(texts, args.vocab_size)
    tok.save_pretrained(args.out / "tokenizer")
    print(f"wrote {len(train_rows)} train, {len(student_rows)} student, {len(test_rows)} test examples "
          f"and a {len(tok)}-token tokenizer to {args.out}")


if __name__ == "__main__":
    main()
