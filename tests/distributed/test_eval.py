"""`t3s eval` end to end on a tiny model (transformers backend, CPU), resume, compare, wrong tokenizer."""

import json
import shutil
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


def test_eval_refuses_a_missing_answer_field(tmp_path):
    bench = tmp_path / "bad.jsonl"
    bench.write_text('{"problem": "1+1?"}\n')
    p = subprocess.run([*t3s(), "eval", str(tmp_path), "--benchmark", str(bench), "--out", str(tmp_path / "o")],
                       env=env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "bad.jsonl:1: missing or empty field 'answer'" in p.stderr
    assert "Traceback" not in p.stderr
