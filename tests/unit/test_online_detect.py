"""Online detection of theta_b on a curve that grows one evaluation at a time (steps[0] = theta_0)."""

import pytest

from t3s_nemo.config import load_config
from t3s_nemo.errors import T3SError
from t3s_nemo.trajectory.online import at_budget_end, detect, load_state, save_state

SHOCK = [0.80, 0.60, 0.20, 0.55, 0.30, 0.25, 0.30, 0.60, 0.70]
STEPS = [10 * i for i in range(len(SHOCK))]


def first_detection(accuracy, steps=STEPS, **kw):
    """Feed the curve evaluation by evaluation, as the driver does; the first detection and its length."""
    for n in range(1, len(accuracy) + 1):
        d = detect(steps[:n], accuracy[:n], **kw)
        if d is not None:
            return n, d
    return None, None


def test_argmin_waits_for_patience_evaluations_that_stay_above_the_minimum():
    n, d = first_detection(SHOCK, rule="argmin", patience=2)
    # the minimum 0.20 at step 20 is confirmed by 0.55 (step 30) and 0.30 (step 40)
    assert (n, d["step"], d["at_step"]) == (5, 20, 40)
    assert d["dip"] == pytest.approx(0.60)
    n, d = first_detection(SHOCK, rule="argmin", patience=0)
    assert (n, d["step"], d["at_step"]) == (2, 10, 10)  # no patience: the first dip below the margin


def test_a_new_minimum_restarts_the_patience():
    curve = [0.8, 0.5, 0.6, 0.4, 0.5, 0.5, 0.5]
    n, d = first_detection(curve, rule="argmin", patience=2)
    # 0.5 at step 10 had one confirmation (0.6) when 0.4 at step 30 replaced it: two more evaluations needed
    assert (n, d["step"], d["at_step"]) == (6, 30, 50)


def test_no_dip_below_the_margin_is_never_detected():
    flat = [0.50, 0.49, 0.50, 0.51, 0.52, 0.53]
    assert first_detection(flat, rule="argmin", patience=1) == (None, None)
    n, d = first_detection(flat, rule="argmin", patience=1, margin=0.005)
    assert d["step"] == 10


def test_first_recovery_needs_the_recovery_itself():
    # falls and stays down: argmin would fire with patience, first_recovery waits for the climb of 0.05
    curve = [0.8, 0.3, 0.31, 0.32, 0.33, 0.36]
    assert first_detection(curve, rule="argmin", patience=2)[1]["at_step"] == 30
    n, d = first_detection(curve, rule="first_recovery", patience=0, recovery=0.05)
    assert (d["step"], d["at_step"]) == (10, 50)


def test_moving_average_patience_is_on_the_smoothed_curve():
    # patience 1: at step 40 the smoothed curve ends .45 .35 .425 (the last window shrunk): step 30 looks confirmed
    n, d = first_detection(SHOCK, rule="moving_average", patience=1, window=3)
    assert (d["step"], d["at_step"]) == (30, 40)
    # patience 2: 0.25 at step 50 pulls the smoothed minimum there (0.283), confirmed by steps 60 and 70
    n, d = first_detection(SHOCK, rule="moving_average", patience=2, window=3)
    assert (d["step"], d["at_step"]) == (50, 70)


def test_force_step_detects_exactly_there_whatever_the_curve():
    flat = [0.5] * 6
    n, d = first_detection(flat, rule="argmin", patience=3, force_step=30)
    assert (n, d["step"], d["at_step"], d["reason"]) == (4, 30, 30, "forced")
    # even a curve with an earlier, patient dip waits for the forced step
    n, d = first_detection(SHOCK, rule="argmin", patience=0, force_step=60)
    assert (d["step"], d["at_step"]) == (60, 60)


def test_budget_end_applies_the_offline_rule_or_refuses_without_a_dip(tmp_path):
    d = at_budget_end(STEPS[:4], SHOCK[:4], "argmin", 3, 0.05, 0.02, force=False, run_dir=tmp_path)
    assert (d["step"], d["reason"]) == (20, "budget_end")
    with pytest.raises(T3SError, match="no Imitation Shock found.*rerun with --force"):
        at_budget_end([0, 10, 20], [0.5, 0.5, 0.6], "argmin", 3, 0.05, 0.02, force=False, run_dir=tmp_path)
    d = at_budget_end([0, 10, 20], [0.5, 0.5, 0.6], "argmin", 3, 0.05, 0.02, force=True, run_dir=tmp_path)
    assert (d["step"], d["reason"]) == (10, "budget_end+forced")


def test_resuming_with_other_online_settings_is_refused(tmp_path):
    settings = {"eval_every": 5, "num_prompts": 8, "patience": 2, "force_step": None, "restart": "theta0",
                "rule": "argmin", "window": 3, "recovery": 0.05, "margin": 0.02, "sft_steps": 50, "mask_rule": "ar"}
    state = load_state(tmp_path, settings)
    assert state["phase"] == "sft" and not (tmp_path / "online.json").exists()
    save_state(tmp_path, state)
    assert load_state(tmp_path, dict(settings))["settings"] == settings
    with pytest.raises(T3SError, match=r"online\.eval_every=5, now 10"):
        load_state(tmp_path, {**settings, "eval_every": 10})
    with pytest.raises(T3SError, match=r"bottleneck\.rule='argmin', now 'moving_average'"):
        load_state(tmp_path, {**settings, "rule": "moving_average"})


def test_online_config_keys_are_checked():
    cfg = load_config(None, ["online.eval_every=5", "online.force_step=10", "online.restart=current"])
    assert (cfg.online.eval_every, cfg.online.force_step, cfg.online.restart) == (5, 10, "current")
    with pytest.raises(T3SError, match=r"'online\.force_step': must be a positive multiple of online\.eval_every=5"):
        load_config(None, ["online.eval_every=5", "online.force_step=7"])
    with pytest.raises(T3SError, match=r"'online\.restart': 'theta_0' is not one of theta0 \| current"):
        load_config(None, ["online.restart=theta_0"])
    with pytest.raises(T3SError, match=r"'online\.eval_every': must be > 0"):
        load_config(None, ["online.eval_every=0"])
    with pytest.raises(T3SError, match=r"'train\.stop_at': must be >= 1"):
        load_config(None, ["train.stop_at=0"])


def test_tolerance_detects_the_start_of_a_floor():
    floor = [1.0, 0.031, 0.0, 0.031, 0.031, 0.0, 0.031]
    steps = [4 * i for i in range(len(floor))]
    # argmin: each new 0.0 restarts the patience; with tolerance 0.05 the floor's first snapshot holds
    n, d = first_detection(floor, steps, rule="argmin", patience=2)
    assert (n, d["step"]) == (5, 8)
    n, d = first_detection(floor, steps, rule="argmin", patience=2, tolerance=0.05)
    assert (n, d["step"], d["at_step"]) == (4, 4, 12)


def test_online_state_from_before_tolerance_resumes_with_the_default(tmp_path):
    import json

    settings = {"eval_every": 5, "num_prompts": 8, "patience": 2, "force_step": None, "restart": "theta0",
                "rule": "argmin", "window": 3, "recovery": 0.05, "margin": 0.02, "sft_steps": 50, "mask_rule": "ar"}
    save_state(tmp_path, load_state(tmp_path, settings))  # written without the tolerance key
    assert "tolerance" not in json.loads((tmp_path / "online.json").read_text())["settings"]
    load_state(tmp_path, {**settings, "tolerance": 0.0})
    with pytest.raises(T3SError, match=r"bottleneck\.tolerance=0\.0, now 0\.05"):
        load_state(tmp_path, {**settings, "tolerance": 0.05})


@pytest.mark.parametrize("key", ["pipeline.baselines=[random]", "pipeline.rrt=true", "profile.selector_base=/ckpt/8b",
                                 "online.force_step=99"])
def test_online_refuses_what_it_cannot_honour_before_writing(tmp_path, key):
    from pathlib import Path

    from t3s_nemo.trajectory.pipeline import run_pipeline

    config = Path(__file__).resolve().parents[2] / "configs" / "tiny" / "sft.yaml"
    root = tmp_path / "run"
    with pytest.raises(T3SError, match=f"config key.*'{key.split('=')[0]}'"):
        run_pipeline(config, [f"run_dir={root}", "pipeline.online=true", "pipeline.baselines=[]",
                              "pipeline.rrt=false", "pipeline.sft_steps=8", key])
    assert not root.exists()  # no run directory, no config.yaml for a run that never started
