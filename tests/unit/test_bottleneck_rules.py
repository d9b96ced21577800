"""Bottleneck rules and the dip check on hand-made accuracy curves (index 0 = theta_0)."""

import json
import math

import pytest

from t3s_nemo.errors import T3SError
from t3s_nemo.trajectory.bottleneck import (
    argmin,
    first_recovery,
    MEGATRON_SAMPLER,
    load_result,
    moving_average,
    no_dip_message,
    prompt_indices,
    read_losses,
    result_key,
    select,
    select_snapshots,
    smooth,
)

# an Imitation Shock: sharp drop, a noisy bottom, slow recovery
SHOCK = [0.80, 0.60, 0.20, 0.55, 0.30, 0.25, 0.30, 0.60, 0.70]


def test_argmin_is_the_lowest_snapshot_after_theta0():
    assert argmin(SHOCK) == 2
    assert argmin([0.8, 0.3, 0.5, 0.3]) == 1  # ties: the earliest
    assert argmin([0.1, 0.5, 0.4]) == 2  # theta_0 itself is never theta_b


def test_smooth_is_a_centred_moving_average_shrunk_at_the_ends():
    assert smooth([0.0, 3.0, 6.0, 9.0], 1) == [0.0, 3.0, 6.0, 9.0]
    assert smooth([0.0, 3.0, 6.0, 9.0], 3) == pytest.approx([1.5, 3.0, 6.0, 7.5])
    # even window: one more point after than before
    assert smooth([0.0, 4.0, 8.0, 12.0], 2) == pytest.approx([2.0, 6.0, 10.0, 12.0])


def test_moving_average_ignores_one_unlucky_snapshot():
    # argmin falls for the single outlier at 2; the smoothed curve's valley is at 5
    assert moving_average(SHOCK, 3) == 5
    assert moving_average(SHOCK, 1) == argmin(SHOCK)


def test_first_recovery_takes_the_first_minimum_that_recovers():
    curve = [0.8, 0.5, 0.45, 0.6, 0.3, 0.7]
    assert argmin(curve) == 4
    assert first_recovery(curve, 0.10) == 2  # 0.45 -> 0.60 climbs 0.15
    assert first_recovery(curve, 0.20) == 4  # 0.15 is not enough; 0.30 -> 0.70 is
    assert first_recovery([0.8, 0.6, 0.5, 0.4, 0.3], 0.05) is None  # still falling
    assert first_recovery([0.8, 0.5, 0.55], 0.05) == 1  # exactly `recovery` counts


def test_select_measures_the_dip_against_theta0():
    s = select(SHOCK, "argmin", margin=0.02)
    assert (s.index, s.base_accuracy, s.min_accuracy) == (2, 0.80, 0.20)
    assert s.dip == pytest.approx(0.60) and not s.no_dip
    s = select(SHOCK, "moving_average", window=3)
    assert s.index == 5
    assert s.min_accuracy == pytest.approx((0.30 + 0.25 + 0.30) / 3)  # the smoothed minimum
    assert s.smoothed == pytest.approx(smooth(SHOCK, 3))
    s = select([0.8, 0.5, 0.45, 0.6, 0.3, 0.7], "first_recovery", recovery=0.1)
    assert (s.index, s.recovered) == (2, True)
    assert s.dip == pytest.approx(0.35)


def test_first_recovery_without_recovery_falls_back_to_the_lowest_so_far():
    s = select([0.8, 0.6, 0.5, 0.4], "first_recovery", recovery=0.05)
    assert (s.index, s.recovered, s.no_dip) == (3, False, False)


@pytest.mark.parametrize(
    "curve, margin, no_dip",
    [
        ([0.80, 0.78, 0.79], 0.02, False),  # a dip of exactly the margin counts
        ([0.80, 0.78, 0.79], 0.03, True),
        ([0.50, 0.60, 0.70], 0.02, True),  # accuracy only rises
        ([0.0, 0.0, 0.0, 0.0], 0.02, True),  # a model that never answers right
        ([0.0, 0.0, 0.0, 0.0], 0.0, False),  # margin 0: any non-rise is a dip
    ],
)
def test_dip_check_uses_the_margin(curve, margin, no_dip):
    for rule in ("argmin", "moving_average", "first_recovery"):
        assert select(curve, rule, window=1, margin=margin).no_dip is no_dip


def test_no_dip_message_says_t3s_does_not_apply_and_suggests_force(tmp_path):
    sel = select([0.5, 0.6, 0.55], "argmin")
    msg = no_dip_message(tmp_path, [0, 1, 2], sel, 0.02)
    assert "no Imitation Shock" in msg and "T3S does not apply" in msg and "--force" in msg
    assert "step 2" in msg and "\n" not in msg


def test_select_rejects_short_curves_and_unknown_rules():
    with pytest.raises(T3SError, match="at least one later snapshot"):
        select([0.5], "argmin")
    with pytest.raises(T3SError, match="bottleneck.rule"):
        select([0.5, 0.4], "median")


def test_select_snapshots_keeps_theta0_and_every_kth_in_the_window(tmp_path):
    snaps = [(s, tmp_path / f"step_{s}") for s in range(0, 11)]
    steps = lambda chosen: [s for s, _ in chosen]  # noqa: E731
    assert steps(select_snapshots(snaps, 1, None, None)) == list(range(11))
    assert steps(select_snapshots(snaps, 3, None, None)) == [0, 3, 6, 9]
    assert steps(select_snapshots(snaps, 2, 3, 8)) == [0, 3, 5, 7]
    assert steps(select_snapshots(snaps[1:], 2, None, None)) == [1, 3, 5, 7, 9]  # no step 0 saved


def test_prompt_indices_are_a_seeded_subset_in_dataset_order():
    assert prompt_indices(5, None, 0) == [0, 1, 2, 3, 4]
    assert prompt_indices(5, 9, 0) == [0, 1, 2, 3, 4]
    a = prompt_indices(100, 10, 0)
    assert len(set(a)) == 10 and a == sorted(a) and a == prompt_indices(100, 10, 0)
    assert a != prompt_indices(100, 10, 1)
    with pytest.raises(T3SError, match="num_prompts"):
        prompt_indices(100, 0, 0)


def test_read_losses_takes_the_last_record_of_a_step(tmp_path):
    lines = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 2, "loss": 1.4}, {"step": 3, "loss": math.nan}]
    text = "\n".join(json.dumps(r) for r in lines) + '\n{"step": 4, "lo'  # NaN and a line cut by a crash
    (tmp_path / "trajectory.jsonl").write_text(text)
    assert read_losses(tmp_path) == {1: 2.0, 2: 1.4}
    assert read_losses(tmp_path / "missing") == {}


def test_saved_results_are_reused_only_with_the_same_settings_and_prompts(tmp_path):
    gen = {"backend": "transformers", "n": 2, "temperature": 0.6, "top_p": 0.95, "max_new_tokens": 24, "seed": 0,
           "batch_size": 8, "tp": 1}
    key = result_key(gen, ["a", "b"])
    path = tmp_path / "step_3.json"
    path.write_text(json.dumps({"step": 3, "accuracy": 0.5, **key}))
    assert load_result(path, key)["accuracy"] == 0.5
    # batch size and backend do not change what is sampled from; n, seed and the prompts do
    assert load_result(path, result_key({**gen, "batch_size": 64, "backend": "vllm"}, ["a", "b"])) is not None
    assert load_result(path, result_key({**gen, "n": 4}, ["a", "b"])) is None
    assert load_result(path, result_key({**gen, "seed": 1}, ["a", "b"])) is None
    assert load_result(path, result_key(gen, ["a", "c"])) is None
    # a result scored before the end-of-turn stop and the </think> rule is evaluated again
    path.write_text(json.dumps({"step": 3, "accuracy": 0.5, **{k: v for k, v in key.items() if k != "scoring"}}))
    assert load_result(path, key) is None
    # megatron's samples from before its sampler ended rows at every stop id and kept it are made again
    path.write_text(json.dumps({"step": 3, "accuracy": 0.5, **key, "backend": "megatron"}))
    assert load_result(path, key) is None
    path.write_text(json.dumps({"step": 3, "accuracy": 0.5, **key, "backend": "megatron",
                                "megatron_sampler": MEGATRON_SAMPLER}))
    assert load_result(path, key)["accuracy"] == 0.5
    path.write_text('{"step": 3, "accur')  # cut short
    assert load_result(path, key) is None
    assert load_result(tmp_path / "step_4.json", key) is None


def test_parse_shard():
    from t3s_nemo.trajectory.bottleneck import parse_shard

    assert parse_shard("0/1") == (0, 1) and parse_shard("3/4") == (3, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0", "1/2/3"):
        with pytest.raises(T3SError, match="expected I/K with 0 <= I < K"):
            parse_shard(bad)


def test_tolerance_picks_where_a_floor_starts():
    # a shock without recovery: which floor snapshot is lowest is noise (1/32 = 0.031)
    floor = [1.0, 0.031, 0.031, 0.031, 0.062, 0.0]
    assert select(floor, "argmin").index == 5  # the paper's argmin: the last snapshot
    s = select(floor, "argmin", tolerance=0.05)
    assert (s.index, s.min_accuracy) == (1, 0.031) and s.dip == pytest.approx(0.969)
    assert select(floor, "argmin", tolerance=0.01).index == 5  # 0.031 is not within 0.01 of 0
    assert select(SHOCK, "argmin", tolerance=0.0).index == select(SHOCK, "argmin").index
    smoothed = smooth(floor, 3)
    s = select(floor, "moving_average", window=3, tolerance=0.05)
    assert s.index == 1 + next(i for i, v in enumerate(smoothed[1:]) if v <= min(smoothed[1:]) + 0.05)
    with pytest.raises(T3SError, match="bottleneck.tolerance"):
        select(floor, "argmin", tolerance=-0.1)


def test_a_run_without_snapshots_is_told_to_train_a_new_one_with_them(tmp_path):
    """Snapshots are taken while a run trains: resuming a finished run with snapshot_interval=1 makes none."""
    import shutil
    from pathlib import Path

    from t3s_nemo.trajectory.bottleneck import run_bottleneck

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(Path(__file__).resolve().parents[2] / "configs" / "tiny" / "sft.yaml", run / "config.yaml")
    with pytest.raises(T3SError, match="no complete snapshots; they are taken while a run trains: train one "
                                       "into a new run_dir with checkpoint.snapshot_interval=1"):
        run_bottleneck(run)
