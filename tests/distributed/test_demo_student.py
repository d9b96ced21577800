"""The demo's stage 0: the bundled student solves its task, and the rebuild path produces a loadable student."""

import json
import sys

import torch

from procs import DEMO, run


def _greedy_accuracy(model_dir, records):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from t3s_nemo.trajectory.verify import is_correct

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tok.padding_side = "left"
    texts = [tok.apply_chat_template([{"role": "user", "content": r["prompt"]}], tokenize=False, add_generation_prompt=True)
             for r in records]
    enc = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=100, do_sample=False, pad_token_id=tok.pad_token_id)
    answers = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return sum(is_correct(a, r["answer"]) for a, r in zip(answers, records)) / len(records), answers


def test_bundled_student_solves_the_distillation_prompts_in_its_own_style():
    """theta_0 of the demo has a skill to lose: it answers the teacher set's prompts, tersely."""
    from t3s_nemo.config import load_config
    from t3s_nemo.demo.student import BUNDLED, demo_config

    cfg = load_config(demo_config())
    hf = json.loads((BUNDLED / "config.json").read_text())
    assert (hf["num_hidden_layers"], hf["hidden_size"], hf["intermediate_size"], hf["head_dim"]) == (
        cfg.model.num_layers, cfg.model.hidden_size, cfg.model.ffn_hidden_size, cfg.model.head_dim)
    records = [json.loads(line) for line in (DEMO / "train.jsonl").read_text().splitlines()[:24]]
    accuracy, answers = _greedy_accuracy(BUNDLED, records)
    assert accuracy >= 0.9
    assert not any("Wait" in a or "Okay" in a for a in answers)  # the student's style, not the teacher's


def test_rebuild_student_runs_both_phases_and_exports(tmp_path):
    out = tmp_path / "student"
    code = ("import sys; from pathlib import Path; from t3s_nemo.demo.student import build_student; "
            "build_student(Path(sys.argv[1]), phases=((3, 3e-3, 1e-4, 1, 1), (2, 1e-3, 1e-4, 1, 2)))")
    run([sys.executable, "-c", code, str(out)], timeout=900)
    info = json.loads((out / "student.json").read_text())
    assert [p["steps"] for p in info["phases"]] == [3, 2]
    phase2 = [json.loads(x) for x in (tmp_path / "student.work" / "phase2" / "trajectory.jsonl").read_text().splitlines()]
    assert [r["step"] for r in phase2] == [1, 2]  # phase 2 starts from phase 1's weights at step 0 of its own schedule
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 4 and (out / "tokenizer.json").is_file()
