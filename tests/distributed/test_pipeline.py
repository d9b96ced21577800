"""`t3s pipeline` end to end on the tiny config, then rerun: every finished stage is skipped."""

import json
import re
import shutil

from procs import TINY, run, t3s


def test_pipeline_runs_every_stage_and_resumes(tiny_data, tmp_path):
    root = tmp_path / "p"
    data = tmp_path / "data"  # the pipeline adds channels to its dataset: not the session's shared one
    shutil.copytree(tiny_data, data)
    args = [*t3s(), "pipeline", str(TINY), f"run_dir={root}", f"data.path={data}", "train.steps=2",
            "pipeline.sft_steps=3", "train.global_batch_size=2", "pipeline.baselines=[random]", "pipeline.rrt=true",
            "generation.n=1", "generation.max_new_tokens=8", "bottleneck.num_prompts=2", "train.tensorboard=false",
            "checkpoint.async_save=false", "pipeline.curves=true", "--force"]
    run(args)
    s = json.loads((root / "pipeline.json").read_text())
    assert set(s["runs"]) == {"sft", "t3s", "random", "rrt"}
    assert 1 <= s["bottleneck_step"] <= 3  # theta_0 is the reference, never theta_b
    for name in ("t3s", "random"):
        recs = [json.loads(x) for x in (root / name / "trajectory.jsonl").read_text().splitlines()]
        assert [r["step"] for r in recs] == [1, 2]
    assert (root / "sft" / "rrt" / "t3s.json").is_file()
    assert (root / "sft" / "accuracy.png").is_file()
    assert s["masks"]["ar"]["masked_fraction"] == s["masks"]["random"]["masked_fraction"]
    page = (root / "report.html").read_text()
    assert f"theta_b = step {s['bottleneck_step']}" in page and "t3s_mask.html" in page and "accuracy.png" in page

    # curves: every run's snapshots evaluated like the trajectory's, retraining runs sharing theta_0
    curves = json.loads((root / "curves.json").read_text())
    assert set(curves["runs"]) == {"sft", "t3s", "random", "rrt"}
    sft_acc = dict(zip(curves["runs"]["sft"]["steps"], curves["runs"]["sft"]["accuracy"]))
    for name in ("t3s", "random"):
        c = curves["runs"][name]
        assert c["steps"] == [0, 1, 2] and c["accuracy"][0] == sft_acc[0] == curves["theta0_accuracy"]
        for step, acc in zip(c["steps"][1:], c["accuracy"][1:]):
            saved = json.loads((root / name / "bottleneck" / f"step_{step}.json").read_text())
            assert saved["accuracy"] == acc and saved["prompts"] == 2
    assert curves["runs"]["rrt"]["steps"] == [3]
    assert {r["method"] for r in curves["table"]} == {"sft", "t3s", "random", "rrt"}
    assert (root / "accuracy_curves.png").stat().st_size > 1000
    assert "| T3S |" in (root / "results.md").read_text()

    second = run(args)
    assert second.stderr.count("done already") == 5  # sft, profile, t3s, random, rrt
    assert "step 1/" not in second.stderr  # nothing trained again
    assert not re.search(r"step \d+: train accuracy", second.stdout + second.stderr)  # nor evaluated again
