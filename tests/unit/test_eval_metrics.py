"""avg@k / pass@k against hand computations, and benchmark input errors."""

import json

import pytest

from t3s_nemo.errors import T3SError
from t3s_nemo.trajectory.evaluate import pass_at_k, read_benchmark, summarise


def test_pass_at_k_hand_values():
    assert pass_at_k(4, 0, 1) == 0.0
    assert pass_at_k(4, 4, 1) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(4, 2, 4) == 1.0


def test_summary_of_fixed_generations():
    records = [
        {"correct": [True, False, False, False], "num_tokens": [10, 20, 30, 40]},
        {"correct": [True, True, False, False], "num_tokens": [50, 60, 70, 80]},
        {"correct": [False, False, False, False], "num_tokens": [90, 100, 110, 120]},
    ]
    s = summarise(records, k=4)
    assert s["avg@k"] == pytest.approx(3 / 12)
    assert s["pass@k"] == pytest.approx(2 / 3)
    assert s["pass@1"] == pytest.approx((0.25 + 0.5 + 0) / 3)
    assert s["mean_tokens"] == pytest.approx(65.0)
    assert s["p50_tokens"] == pytest.approx(65.0)
    assert s["p90_tokens"] == pytest.approx(109.0)


def test_benchmark_errors_name_the_line_and_field(tmp_path):
    p = tmp_path / "b.jsonl"
    p.write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n" + json.dumps({"problem": "2+2?"}) + "\n")
    with pytest.raises(T3SError, match=r"b.jsonl:2: missing or empty field 'answer'"):
        read_benchmark(p, "problem", "answer")
    p.write_text("\n")
    with pytest.raises(T3SError, match="empty benchmark"):
        read_benchmark(p, "problem", "answer")
    p.write_text('{"problem": "x", "answer": "1"}\n{bad\n')
    with pytest.raises(T3SError, match=r"b.jsonl:2: invalid JSON"):
        read_benchmark(p, "problem", "answer")
    q = tmp_path / "c.jsonl"
    q.write_text(json.dumps({"question": "1+1?", "solution": "2"}) + "\n")
    assert read_benchmark(q, "question", "solution")[0]["answer"] == "2"
