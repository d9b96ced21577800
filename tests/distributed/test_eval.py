"""`t3s eval` end to end on a tiny model (transformers backend, CPU), resume, compare, wrong tokenizer."""

import json
import os
import shutil
import socket
import subprocess

from procs import DEMO, REPO, env, run, t3s
from test_hf import tiny_hf_model


def test_eval_runs_resumes_and_compares(tmp_path):
    hf = tmp_path / "hf"
    tiny_hf_model(hf, tie=True)
    bench = tmp_path / "mini.jsonl"
    bench.write_text("".join(DEMO.joinpath("test.jsonl").read_text().splitlines(True)[:3]))
    args = [*t3s(), "eval", str(hf), "--benchmark", str(bench), "--out", str(tmp_path / "ev"), "--n", "2",
            "--max-new-tokens", "12", "--backend", "transformers"]
    run(args)
    r = json.loads((tmp_path / "ev" / "results.json").read_text())
    s = r["benchmarks"]["mini"]
    assert s["problems"] == 3 and s["samples_per_problem"] == 2
    lines = (tmp_path / "ev" / "mini.jsonl").read_text().splitlines()
    assert len(lines) == 3 and all(len(json.loads(x)["correct"]) == 2 for x in lines)
    assert 0 <= s["avg@k"] <= s["pass@k"] <= 1 and 1 <= s["mean_tokens"] <= 12
    run(args)  # resumed: nothing sampled again
    assert (tmp_path / "ev" / "mini.jsonl").read_text().splitlines() == lines
    shutil.copytree(tmp_path / "ev", tmp_path / "ev2")
    p = run([*t3s(), "eval", "compare", f"a={tmp_path / 'ev' / 'results.json'}", f"b={tmp_path / 'ev2' / 'results.json'}",
             "--out", str(tmp_path / "cmp.png")])
    assert (tmp_path / "cmp.png").stat().st_size > 1000
    assert "mini" in p.stdout and "overall" in p.stdout
    for bad, says in ((tmp_path, "is a directory; give a file name"), (tmp_path / "c.jpg", "by the file's suffix"),
                      (tmp_path / "no" / "c.png", "does not exist")):
        p = subprocess.run([*t3s(), "eval", "compare", str(tmp_path / "ev" / "results.json"), "--out", str(bad)],
                           env=env(), cwd=REPO, capture_output=True, text=True, timeout=300)
        assert p.returncode == 1 and says in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not list(tmp_path.glob(".*.tmp*"))

    # another model into the same --out: its answers are not the first model's, and nothing is written
    other = tmp_path / "other"
    shutil.copytree(hf, other)
    before = {f.name: f.read_bytes() for f in (tmp_path / "ev").iterdir()}
    p = subprocess.run([*t3s(), "eval", str(other), *args[3:]], env=env(), cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 1 and f"mini.jsonl holds the answers of {hf.resolve()}, not {other.resolve()}" in p.stderr
    assert {f.name: f.read_bytes() for f in (tmp_path / "ev").iterdir()} == before


def test_eval_keeps_answers_within_the_models_context_and_clears_a_killed_runs_export(tmp_path):
    from t3s_nemo.data.tokenizer import load_tokenizer

    hf = tmp_path / "hf"
    tiny_hf_model(hf, tie=True)
    bench = tmp_path / "mini.jsonl"
    bench.write_text("".join(DEMO.joinpath("test.jsonl").read_text().splitlines(True)[:2]))
    tok = load_tokenizer(hf)
    lengths = [len(tok.apply_chat_template([{"role": "user", "content": json.loads(x)["problem"]}], tokenize=True,
                                           add_generation_prompt=True, return_dict=False))
               for x in bench.read_text().splitlines()]
    width = max(lengths)
    cfg = json.loads((hf / "config.json").read_text())
    cfg["max_position_embeddings"] = width + 5
    (hf / "config.json").write_text(json.dumps(cfg))
    # an export left by a killed eval on this host goes; a running eval's (this test's process) stays
    host, dead = socket.gethostname(), subprocess.Popen(["true"])
    dead.wait()
    stale, live = tmp_path / "ev" / f".work-{host}-{dead.pid}-x", tmp_path / "ev" / f".work-{host}-{os.getpid()}-y"
    (stale / "hf").mkdir(parents=True)
    (live / "hf").mkdir(parents=True)
    # an answer saved by an older version (no model in its settings) is sampled again, not refused
    (tmp_path / "ev" / "mini.jsonl").write_text(json.dumps({"id": "x", "settings": {"n": 1}, "correct": [True]}) + "\n")
    p = run([*t3s(), "eval", str(hf), "--benchmark", str(bench), "--out", str(tmp_path / "ev"), "--n", "1",
             "--temperature", "0", "--max-new-tokens", "40", "--backend", "transformers"])
    assert f"an answer ends where prompt + answer reach {width + 5} tokens" in " ".join((p.stdout + p.stderr).split())
    records = [json.loads(x) for x in (tmp_path / "ev" / "mini.jsonl").read_text().splitlines()][1:]
    # each answer has its own room: the shorter prompt's may run longer than the longer one's 5 tokens
    assert len(records) == 2 and all(r["num_tokens"][0] <= width + 5 - n for r, n in zip(records, lengths))
    assert max(r["num_tokens"][0] for r in records) <= 40
    assert not stale.exists() and live.exists()


def test_eval_refuses_a_missing_answer_field(tmp_path):
    bench = tmp_path / "bad.jsonl"
    bench.write_text('{"problem": "1+1?"}\n')
    p = subprocess.run([*t3s(), "eval", str(tmp_path), "--benchmark", str(bench), "--out", str(tmp_path / "o")],
                       env=env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "bad.jsonl:1: missing or empty field 'answer'" in p.stderr
    assert "Traceback" not in p.stderr
