"""`t3s eval`: avg@k and pass@k on local benchmark JSONL files, answers checked with math-verify.

avg@k is the mean accuracy over all k samples of all problems (the paper's AIME numbers); pass@k the
unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k), averaged over problems. Results
are resumable: each finished problem is one line of OUT/<benchmark>.jsonl and is not sampled again.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from t3s_nemo.console import console, progress
from t3s_nemo.errors import T3SError
from t3s_nemo.io import atomic_write_json


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (c of them correct) is correct."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def summarise(records: Sequence[dict], k: int) -> dict:
    """avg@k, pass@k and generated-token statistics over per-problem records."""
    if not records:
        return {"problems": 0}
    correct = [sum(r["correct"]) for r in records]
    n = [len(r["correct"]) for r in records]
    tokens = np.array([t for r in records for t in r["num_tokens"]], dtype=float)
    return {
        "problems": len(records),
        "samples_per_problem": k,
        "avg@k": float(sum(correct) / sum(n)),
        "pass@k": float(np.mean([pass_at_k(ni, ci, min(k, ni)) for ni, ci in zip(n, correct)])),
        "pass@1": float(np.mean([pass_at_k(ni, ci, 1) for ni, ci in zip(n, correct)])),
        "mean_tokens": float(tokens.mean()),
        "p50_tokens": float(np.percentile(tokens, 50)),
        "p90_tokens": float(np.percentile(tokens, 90)),
    }


def read_benchmark(path: Path, problem_field: str, answer_field: str) -> list[dict]:
    if not path.is_file():
        raise T3SError(f"{path}: benchmark file not found")
    items = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise T3SError(f"{path}:{lineno}: invalid JSON: {e.msg}") from None
            for field in (problem_field, answer_field):
                if not isinstance(obj, dict) or obj.get(field) in (None, ""):
                    flag = "--problem-field" if field == problem_field else "--answer-field"
                    raise T3SError(f"{path}:{lineno}: missing or empty field '{field}' (another name: {flag})")
            items.append({"id": str(obj.get("id", lineno)), "problem": str(obj[problem_field]),
                          "answer": str(obj[answer_field])})
    if not items:
        raise T3SError(f"{path}: empty benchmark (no problems)")
    return items


def _prepare_model(model: Path, tokenizer: Optional[Path], work: Path, export: bool = True) -> tuple[Path, Path, str]:
    """(model to sample from, tokenizer directory, fingerprint) for a t3s checkpoint (exported to HF unless
    export is False: backend=megatron samples from the checkpoint) or an HF directory."""
    from t3s_nemo.checkpoint import weights as W
    from t3s_nemo.data.tokenizer import fingerprint, load_tokenizer
    from t3s_nemo.trajectory.bottleneck import export_snapshot

    if W.is_complete(model):
        marker = W.read_marker(model)
        tok_dir = Path(tokenizer) if tokenizer else Path(marker.get("tokenizer", ""))
        fp = fingerprint(load_tokenizer(tok_dir))
        if marker.get("tokenizer_fingerprint") and marker["tokenizer_fingerprint"] != fp:
            raise T3SError(f"{tok_dir}: not the tokenizer {model} was trained with (fingerprint differs)")
        if not export:
            return model, tok_dir, fp
        hf = work / "hf"
        export_snapshot(model, hf, tok_dir)
        return hf, hf, fp
    if (model / "config.json").is_file():
        if not export:
            raise T3SError(f"{model}: generation.backend=megatron samples from a t3s checkpoint; for a Hugging "
                           "Face directory use transformers or vllm (or `t3s import` it first)")
        tok = load_tokenizer(tokenizer or model)
        return model, Path(tokenizer or model), fingerprint(tok)
    raise T3SError(f"{model}: neither a complete t3s checkpoint nor a Hugging Face model directory")


def evaluate(model: Path, benchmarks: Sequence[Path], out: Path, gen, tokenizer: Optional[Path] = None,
             problem_field: str = "problem", answer_field: str = "answer") -> dict:
    """Sample gen.n answers per problem, verify, and write OUT/<benchmark>.jsonl + OUT/results.json."""
    from t3s_nemo.data.tokenizer import load_tokenizer
    from t3s_nemo.trajectory.generate import generate, resolve_backend
    from t3s_nemo.trajectory.verify import is_correct

    model, out = Path(model), Path(out)
    if gen.n < 1 or gen.max_new_tokens < 1 or gen.batch_size < 1:
        raise T3SError(f"--n, --max-new-tokens and --batch-size must be >= 1 (got {gen.n}, {gen.max_new_tokens}, "
                       f"{gen.batch_size})")
    benches = {Path(b).stem: read_benchmark(Path(b), problem_field, answer_field) for b in benchmarks}
    from t3s_nemo.checkpoint import weights as W

    if not W.is_complete(model) and not (model / "config.json").is_file():  # before OUT is created
        raise T3SError(f"{model}: neither a complete t3s checkpoint nor a Hugging Face model directory")
    model_id = str(model.resolve())
    _check_same_model(out, benches, model_id)
    objective = W.read_marker(model).get("objective", "ar") if W.is_complete(model) else "ar"
    out.mkdir(parents=True, exist_ok=True)
    _clear_killed_work(out)

    settings = {"n": gen.n, "temperature": gen.temperature, "top_p": gen.top_p,
                "max_new_tokens": gen.max_new_tokens, "seed": gen.seed,
                "backend": resolve_backend(gen.backend, objective, gen.tp, checkpoint=W.is_complete(model))}
    with tempfile.TemporaryDirectory(dir=out, prefix=f"{_WORK}{socket.gethostname()}-{os.getpid()}-") as work:
        hf_dir, tok_dir, fp = _prepare_model(model, tokenizer, Path(work), export=settings["backend"] != "megatron")
        tok = load_tokenizer(tok_dir)
        if not getattr(tok, "chat_template", None):
            raise T3SError(f"{tok_dir}: tokenizer has no chat template to format the problems with")
        results = {"model": str(model), "tokenizer_fingerprint": fp, "generation": settings, "benchmarks": {}}
        # a finished problem is reused only for the same model, tokenizer and generation settings
        key = {**settings, "model": model_id, "tokenizer_fingerprint": fp}
        for name, items in benches.items():
            path = out / f"{name}.jsonl"
            done = _load_done(path, key)
            todo = [it for it in items if it["id"] not in done]
            if todo:
                console.print(f"{name}: {len(todo)} of {len(items)} problems to sample ({gen.n} each)")
                texts = [tok.apply_chat_template([{"role": "user", "content": it["problem"]}], tokenize=False,
                                                 add_generation_prompt=True) for it in todo]
                prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
                bar = progress()
                with bar:
                    task = bar.add_task(name, total=len(todo))
                    # batches of problems, appended as they finish so an interrupted eval resumes
                    step = max(1, gen.batch_size)
                    for i in range(0, len(todo), step):
                        chunk, chunk_prompts = todo[i : i + step], prompts[i : i + step]
                        samples = generate(hf_dir, chunk_prompts, gen.n, gen.temperature, gen.top_p,
                                           gen.max_new_tokens, gen.seed + i, gen.batch_size,
                                           backend=settings["backend"], tp=gen.tp, tokenizer_dir=tok_dir)
                        with open(path, "a", encoding="utf-8") as f:
                            for it, ss in zip(chunk, samples):
                                rec = {"id": it["id"], "answer": it["answer"], "settings": key,
                                       "correct": [bool(is_correct(s.text, it["answer"])) for s in ss],
                                       "num_tokens": [s.num_tokens for s in ss],
                                       "first_response": ss[0].text[:2000] if ss else ""}
                                f.write(json.dumps(rec) + "\n")
                                done[it["id"]] = rec
                        bar.advance(task, len(chunk))
            records = [done[it["id"]] for it in items]
            results["benchmarks"][name] = summarise(records, gen.n)
    all_records = [r for name, items in benches.items() for r in _load_done(out / f"{name}.jsonl", key).values()]
    results["overall"] = summarise(all_records, gen.n)
    atomic_write_json(out / "results.json", results)
    return results


_WORK = ".work-"  # OUT/.work-HOST-PID-XXXX: a model exported for sampling, deleted when the eval ends


def _clear_killed_work(out: Path) -> None:
    """Delete the exports of evals on this host that were killed before they could (another eval of the same
    model may be sampling into OUT at the same time: its work directory stays)."""
    host = socket.gethostname()
    for work in out.glob(f"{_WORK}{host}-*"):
        pid = work.name[len(_WORK) + len(host) + 1:].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(work, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _check_same_model(out: Path, benches: dict, model_id: str) -> None:
    """OUT holds one model's answers: another model's would be reported under this one's name."""
    for name in benches:
        path = out / f"{name}.jsonl"
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                other = json.loads(line).get("settings", {}).get("model")
            except (json.JSONDecodeError, AttributeError):
                continue
            if other is not None and other != model_id:  # None: an older version's answers, sampled again
                raise T3SError(f"--out {out}: {path.name} holds the answers of {other}, not "
                               f"{model_id}; give each model its own --out")


def _load_done(path: Path, settings: dict) -> dict[str, dict]:
    done = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by an interruption is sampled again
            if isinstance(rec, dict) and "id" in rec and rec.get("settings") == settings:
                done[rec["id"]] = rec
    return done


def table(results: dict[str, dict]):
    """Rich table: rows = result files (checkpoints), columns = benchmarks' avg@k and tokens."""
    from rich.table import Table

    names = sorted({b for r in results.values() for b in r["benchmarks"]})
    t = Table(title="avg@k (pass@k) / mean generated tokens")
    t.add_column("model")
    for b in names + ["overall"]:
        t.add_column(b, justify="right")
    for label, r in results.items():
        cells = []
        for b in names + ["overall"]:
            s = r["overall"] if b == "overall" else r["benchmarks"].get(b)
            cells.append("-" if not s or not s.get("problems") else
                         f"{100 * s['avg@k']:.2f} ({100 * s['pass@k']:.1f}) / {s['mean_tokens']:.0f}")
        t.add_row(label, *cells)
    return t


def check_results(r, path) -> None:
    """A `t3s eval` results.json as table and compare_plot read it, else one error naming the key."""
    if not isinstance(r, dict) or not isinstance(r.get("benchmarks"), dict) or "overall" not in r:
        raise T3SError(f"{path}: not a `t3s eval` results.json (expected 'benchmarks' and 'overall')")
    entries = [("overall", r["overall"]), *((f"benchmarks.{b}", s) for b, s in r["benchmarks"].items())]
    for key, s in entries:
        if not isinstance(s, dict):
            raise T3SError(f"{path}: '{key}' must be an object, got {type(s).__name__}")
        if s.get("problems"):
            bad = [k for k in ("avg@k", "pass@k", "mean_tokens")
                   if isinstance(s.get(k), bool) or not isinstance(s.get(k), (int, float))]
            if bad:
                raise T3SError(f"{path}: '{key}.{bad[0]}' must be a number, got {s.get(bad[0])!r}")


PLOT_FORMATS = (".png", ".pdf", ".svg")


def check_plot_path(path: Path) -> None:
    """--out of `t3s eval compare`: a new or existing file with a plot suffix, in a directory that exists."""
    if path.is_dir():
        raise T3SError(f"--out {path}: is a directory; give a file name such as {path / 'compare.png'}")
    if path.suffix.lower() not in PLOT_FORMATS:
        raise T3SError(f"--out {path}: the plot is written as {', '.join(PLOT_FORMATS)} (by the file's suffix)")
    if not path.parent.is_dir():
        raise T3SError(f"--out {path}: directory {path.parent} does not exist")


def compare_plot(results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({b for r in results.values() for b in r["benchmarks"]}) + ["overall"]
    labels = list(results)
    width = 0.8 / max(1, len(labels))
    fig, ax = plt.subplots(figsize=(max(6, 1.5 * len(names) * len(labels) / 2), 4))
    for j, label in enumerate(labels):
        # a benchmark this result lacks is a gap, not a 0% bar
        vals = [100 * (results[label]["overall"] if b == "overall" else results[label]["benchmarks"].get(b, {})).get("avg@k", np.nan)
                for b in names]
        ax.bar(np.arange(len(names)) + j * width, vals, width, label=label)
    ax.set_xticks(np.arange(len(names)) + width * (len(labels) - 1) / 2, names)
    ax.set_ylabel("avg@k (%)")
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
