"""Packing throughput: (a) pre-tokenised examples through first_fit_decreasing + write_bins, (b) JSONL
through `pack()` with the bundled demo tokenizer (read, template, tokenize, two-pass pack, meta).

    python bench/pack.py                       # 10M tokens each; writes bench/results/pack.json
    python bench/pack.py --tokens 2e6 --e2e-tokens 1e6

Example lengths are drawn like reasoning-distillation traces: responses log-normal around 4k tokens
(long tail, clipped to the bin), prompts log-normal around 150 tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from t3s_nemo.io import atomic_write_json

os.environ.setdefault("T3S_NO_PROGRESS", "1")

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "t3s_nemo" / "assets" / "demo"


def trace_lengths(total_tokens: int, seq_length: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(prompt lengths, full lengths) of examples adding up to about total_tokens."""
    prompts, fulls, n = [], [], 0
    while n < total_tokens:
        p = int(np.clip(rng.lognormal(np.log(150), 0.5), 16, 1024))
        r = int(np.clip(rng.lognormal(np.log(4000), 0.7), 32, seq_length - p))
        prompts.append(p)
        fulls.append(p + r)
        n += p + r
    return np.asarray(prompts, dtype=np.int64), np.asarray(fulls, dtype=np.int64)


def bench_pretokenised(total_tokens: int, seq_length: int, seed: int) -> dict:
    from t3s_nemo.data.indexed import IndexedReader
    from t3s_nemo.data.pack import first_fit_decreasing, write_bins

    rng = np.random.default_rng(seed)
    prompt_lens, lengths = trace_lengths(total_tokens, seq_length, rng)
    seqs = [rng.integers(0, 151_936, size=int(n), dtype=np.int32) for n in lengths]  # Qwen3 vocabulary
    tokens = int(lengths.sum())
    with tempfile.TemporaryDirectory(prefix="t3s-bench-") as tmp:
        t0 = time.perf_counter()
        bins = first_fit_decreasing(lengths, seq_length)
        t1 = time.perf_counter()
        write_bins(Path(tmp), bins, seqs.__getitem__, prompt_lens)
        t2 = time.perf_counter()
        ds = IndexedReader(Path(tmp) / "tokens")
        read = sum(len(ds[i]) for i in range(len(ds)))
        t3 = time.perf_counter()
        written = sum(f.stat().st_size for f in Path(tmp).iterdir())
    assert read == tokens
    return {
        "tokens": tokens,
        "examples": len(lengths),
        "bins": len(bins),
        "seq_length": seq_length,
        "bin_fill": round(tokens / (len(bins) * seq_length), 4),
        "seconds": round(t2 - t0, 3),
        "tokens_per_s": round(tokens / (t2 - t0)),
        "ffd_seconds": round(t1 - t0, 3),
        "write_seconds": round(t2 - t1, 3),
        "bytes_written": written,
        "read_back_seconds": round(t3 - t2, 3),
        "read_back_tokens_per_s": round(tokens / (t3 - t2)),
    }


def make_jsonl(path: Path, total_tokens: int, seq_length: int, tok, seed: int) -> None:
    """Examples whose chat-templated token counts follow trace_lengths, built from demo traces."""
    rng = np.random.default_rng(seed)
    demo = [json.loads(line) for line in (DEMO / "train.jsonl").read_text().splitlines()]
    resp_tokens = np.asarray([len(tok(r["response"], add_special_tokens=False)["input_ids"]) for r in demo])
    prompt_lens, lengths = trace_lengths(total_tokens, seq_length, rng)
    with path.open("w") as f:
        for i, (p, n) in enumerate(zip(prompt_lens, lengths)):
            # a demo prompt repeated up to the drawn prompt length, whole demo traces up to the response length
            base = demo[int(rng.integers(len(demo)))]
            prompt = " ".join([base["prompt"]] * max(1, int(p) // 40))
            budget = min(int(n - p), seq_length - len(tok(prompt)["input_ids"]) - 32)  # 32: template, joins
            parts, have = [], 0
            while True:
                k = int(rng.integers(len(demo)))
                if parts and have + resp_tokens[k] + 2 > budget:
                    break
                parts.append(demo[k]["response"])
                have += int(resp_tokens[k]) + 2
            row = {"id": f"bench-{i:07d}", "prompt": prompt, "response": "\n\n".join(parts), "answer": base["answer"]}
            f.write(json.dumps(row) + "\n")


def bench_end_to_end(total_tokens: int, seq_length: int, seed: int) -> dict:
    from t3s_nemo.data.pack import PackOptions, pack
    from t3s_nemo.data.tokenizer import load_tokenizer

    tok = load_tokenizer(DEMO / "tokenizer")
    with tempfile.TemporaryDirectory(prefix="t3s-bench-") as tmp:
        src = Path(tmp) / "traces.jsonl"
        make_jsonl(src, total_tokens, seq_length, tok, seed)
        t0 = time.perf_counter()
        s = pack([src], DEMO / "tokenizer", Path(tmp) / "packed", PackOptions(seq_length=seq_length, on_overflow="truncate"))
        seconds = time.perf_counter() - t0
        input_bytes = src.stat().st_size
    return {
        "tokens": s.num_tokens,
        "examples": s.num_examples,
        "bins": s.num_bins,
        "seq_length": seq_length,
        "bin_fill": round(s.fill, 4),
        "truncated": s.truncated,
        "input_bytes": input_bytes,
        "tokenizer": "t3s_nemo/assets/demo/tokenizer",
        "seconds": round(seconds, 3),
        "tokens_per_s": round(s.num_tokens / seconds),
    }


def filesystem(path: str) -> str:
    """Type of the filesystem holding path (from /proc/mounts; '' where unknown)."""
    best, kind = "", ""
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, fstype = line.split()[:3]
            if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
                best, kind = mount, fstype
    except OSError:
        pass
    return kind


def machine() -> dict:
    """bench/machine.py's record (shared by every benchmark) plus the libraries packing leans on."""
    import tokenizers

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from machine import machine_info

    return {**machine_info(), "cores_total": os.cpu_count(), "numpy": np.__version__,
            "tokenizers": tokenizers.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=float, default=10e6, help="tokens for the pre-tokenised run (default 10M)")
    ap.add_argument("--e2e-tokens", type=float, default=None, help="tokens for the JSONL run (default: --tokens)")
    ap.add_argument("--seq-length", type=int, default=16384)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pack.json")
    args = ap.parse_args()
    e2e_tokens = args.e2e_tokens if args.e2e_tokens is not None else args.tokens

    import t3s_nemo.data.pack  # noqa: F401  (import time, the tokenizer library's included, is not packing time)

    result = {
        "benchmark": "pack",
        "machine": machine(),
        "notes": (
            f"output in {tempfile.gettempdir()} ({filesystem(tempfile.gettempdir()) or 'unknown fs'}), no fsync, so "
            "pre-tokenised write speed is page-cache speed; end_to_end times pack() alone (JSONL read and checks, "
            "chat template, tokenizer, both passes, tokenizer copy, meta.json), not the interpreter or imports"
        ),
    }
    result["pretokenised"] = bench_pretokenised(int(args.tokens), args.seq_length, args.seed)
    print(f"pre-tokenised: {json.dumps(result['pretokenised'])}", file=sys.stderr)
    result["end_to_end"] = bench_end_to_end(int(e2e_tokens), args.seq_length, args.seed)
    print(f"end-to-end:    {json.dumps(result['end_to_end'])}", file=sys.stderr)
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
