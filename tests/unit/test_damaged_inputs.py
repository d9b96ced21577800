"""Files t3s reads back (JSON results, checkpoint markers, bottleneck.json, result caches) that are
damaged or of the wrong kind give one error naming the file, or are sampled again, never a traceback."""

from __future__ import annotations

import json

import pytest

from t3s_nemo.errors import T3SError


def test_read_json_names_the_file_whatever_is_wrong(tmp_path):
    from t3s_nemo.io import read_json

    (tmp_path / "bin.json").write_bytes(b"\xc9\x00\xff")
    (tmp_path / "list.json").write_text("[]")
    for path, message in ((tmp_path, f"{tmp_path}: is a directory; expected the results (a JSON file)"),
                          (tmp_path / "bin.json", f"{tmp_path / 'bin.json'}: not UTF-8 text; expected the results"),
                          (tmp_path / "list.json", f"{tmp_path / 'list.json'}: results must be a JSON object, got list")):
        with pytest.raises(T3SError) as e:
            read_json(path, "results", expect=dict)
        assert str(e.value).startswith(message)
    assert read_json(tmp_path / "list.json", "results") == []


@pytest.mark.parametrize("marker, message", [
    ([], "checkpoint marker must be a JSON object, got list"),
    ({"shape": "x"}, "field 'shape' must be an object, got str"),
])
def test_a_damaged_checkpoint_marker_is_named(tmp_path, marker, message):
    from t3s_nemo.checkpoint import weights as W

    (tmp_path / "t3s.json").write_text(json.dumps(marker))
    with pytest.raises(T3SError, match=message):
        W.read_marker(tmp_path)


def test_a_marker_without_a_shape_cannot_rebuild_a_model():
    from t3s_nemo.checkpoint.consolidate import config_for

    with pytest.raises(T3SError, match=r"checkpoint marker \(t3s.json\) of /x/ck has no model 'shape'"):
        config_for({"kind": "weights", "source": "/x/ck"})


def snapshot(path):
    path.mkdir(parents=True)
    (path / "t3s.json").write_text(json.dumps({"kind": "weights", "step": 0}))
    return path


def test_run_checkpoints_takes_what_is_given_and_names_what_is_missing(tmp_path):
    from t3s_nemo.trajectory.profile import run_checkpoints

    run = tmp_path / "run"
    (run / "snapshots").mkdir(parents=True)
    a, b = snapshot(tmp_path / "a"), snapshot(tmp_path / "b")
    # given checkpoints are used as they are: no bottleneck.json or step_0 needed (`t3s rrt --base --bottleneck`)
    assert run_checkpoints(run, str(a), str(b)) == (a, b)
    with pytest.raises(T3SError, match=r"run/snapshots/step_0: not a complete checkpoint \(theta_0 of the run needs "
                                       "checkpoint.snapshot_step0=true"):
        run_checkpoints(run, "", str(b))
    with pytest.raises(T3SError, match=r"/nope: not a complete t3s checkpoint \(no t3s.json\); theta_b must be"):
        run_checkpoints(run, str(a), str(tmp_path / "nope"))
    (run / "bottleneck.json").write_text(json.dumps({"bottleneck_step": 3}))
    with pytest.raises(T3SError, match="bottleneck.json: no 'bottleneck_dir'; run `t3s bottleneck"):
        run_checkpoints(run, str(a))
    (run / "bottleneck.json").write_text("[]")
    with pytest.raises(T3SError, match="bottleneck result .* must be a JSON object, got list"):
        run_checkpoints(run, str(a))


def test_result_caches_sample_damaged_records_again(tmp_path):
    from t3s_nemo.trajectory.bottleneck import load_result
    from t3s_nemo.trajectory.evaluate import _load_done

    (tmp_path / "step_0.json").write_text("[]")
    assert load_result(tmp_path / "step_0.json", {"generation": {}, "ids": [], "scoring": {}}) is None
    settings = {"n": 1}
    good = {"id": "q1", "settings": settings, "correct": [True]}
    (tmp_path / "bench.jsonl").write_text("\n".join(["[]", '{"settings": {"n": 1}}', json.dumps(good), "{cut"]))
    assert _load_done(tmp_path / "bench.jsonl", settings) == {"q1": good}
