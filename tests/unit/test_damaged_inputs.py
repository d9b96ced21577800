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
                          (tmp_path / "bin.json", f"{tmp_path / 'bin.json'}: not UTF-8 text (invalid continuation byte at byte 0); expected the results"),
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


@pytest.fixture
def profiled(packed_copy):
    """The demo dataset with a (random) delta channel, as `t3s profile` leaves it."""
    import numpy as np

    from t3s_nemo.data.packed import PackedDataset

    ds = PackedDataset(packed_copy)
    rng = np.random.default_rng(0)
    delta = {eid: rng.normal(size=len(ds.read_example(i)) - int(ds.prompt_lengths[i])).astype(np.float32)
             for i, eid in enumerate(ds.ids)}
    ds.add_channel("delta", delta, "float32", span="response", fill=0.0)
    return packed_copy


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "delta"}, "--name delta: the dataset's delta channel is not a mask (an input of every mask)"),
    ({"name": "loss_mask"}, "--name loss_mask: the dataset's loss_mask channel is not a mask"),
    ({"rule": "dllm", "tau": float("nan")}, "--tau nan: must be a finite number >= 0"),
    ({"rule": "dllm", "tau": -1.0}, "--tau -1.0: must be a finite number >= 0"),
])
def test_mask_refuses_before_writing_anything(profiled, kwargs, message):
    from t3s_nemo.data.packed import PackedDataset
    from t3s_nemo.trajectory.mask_build import build_mask

    before = {p.name: p.read_bytes() for p in profiled.iterdir() if p.is_file()}
    with pytest.raises(T3SError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_mask(PackedDataset(profiled), kwargs.pop("rule", "ar"), **kwargs)
    assert {p.name: p.read_bytes() for p in profiled.iterdir() if p.is_file()} == before


def test_mask_whose_reports_cannot_be_written_leaves_the_dataset_as_it_was(profiled):
    from t3s_nemo.data.packed import PackedDataset
    from t3s_nemo.trajectory.mask_build import build_mask

    (profiled / "masks").write_text("in the way")
    with pytest.raises(T3SError, match="masks: a file where the mask reports go"):
        build_mask(PackedDataset(profiled), "ar")
    assert "t3s_mask" not in PackedDataset(profiled).channels and not (profiled / "t3s_mask.bin").exists()


def test_stages_pointed_at_a_pipeline_directory_name_its_trajectory_run(tmp_path):
    import shutil
    from pathlib import Path

    from t3s_nemo.config import load_config, run_data
    from t3s_nemo.trajectory.bottleneck import run_bottleneck
    from t3s_nemo.trajectory.profile import run_checkpoints

    tiny = Path(__file__).resolve().parents[2] / "configs" / "tiny" / "sft.yaml"
    root = tmp_path / "pipe"
    (root / "sft").mkdir(parents=True)
    shutil.copy(tiny, root / "config.yaml")
    shutil.copy(tiny, root / "sft" / "config.yaml")
    says = f"{root} is a `t3s pipeline` directory: its trajectory run is {root / 'sft'}"
    for call in (lambda: run_checkpoints(root), lambda: run_bottleneck(root),
                 lambda: run_data(load_config(root / "config.yaml"), root)):
        with pytest.raises(T3SError) as e:
            call()
        assert str(e.value).endswith(says)


@pytest.mark.parametrize("config, message", [
    ([1, 2], "config.json: expected a JSON object, got list"),
    ({"model_type": "qwen3", "num_attention_heads": 0}, "field 'num_attention_heads' must be a positive integer, got 0"),
    ({"model_type": "qwen3", "num_hidden_layers": "2"}, "field 'num_hidden_layers' must be a positive integer, got '2'"),
    ({"model_type": "qwen3", "rope_theta": "abc"}, "field 'rope_theta' must be a positive number, got 'abc'"),
])
def test_a_hugging_face_config_of_the_wrong_shape_is_named(tmp_path, config, message):
    from t3s_nemo.model.hf import shape_from_hf_config

    with pytest.raises(T3SError, match=message):
        shape_from_hf_config(config, tmp_path)


def test_analyze_names_a_bad_checkpoint_and_writes_nothing_before_its_checks(tmp_path):
    import shutil
    from pathlib import Path

    from t3s_nemo.analysis.diagnostics import analyze_gradients, analyze_transfer

    run = tmp_path / "run"
    snapshot(run / "snapshots" / "step_0")
    shutil.copy(Path(__file__).resolve().parents[2] / "configs" / "tiny" / "sft.yaml", run / "config.yaml")
    for bad in ("step_abc", "step_", "latest"):
        with pytest.raises(T3SError, match=f"--checkpoint {bad}: expected a step"):
            analyze_transfer(run, checkpoint=bad)
    for call in (lambda: analyze_transfer(run), lambda: analyze_gradients(run)):
        with pytest.raises(T3SError, match="config.yaml: data.path is empty"):
            call()
    assert not (run / "analysis").exists()


@pytest.mark.parametrize("damage, message", [
    (lambda m: [], "packed dataset meta.json must be a JSON object, got list"),
    (lambda m: {k: v for k, v in m.items() if k != "examples"}, "field 'examples' must be an object"),
    (lambda m: {**m, "channels": {**m["channels"], "loss_mask": {"dtype": "float16"}}},
     "field 'channels.loss_mask.dtype' must be one of int32, uint8, float32"),
    (lambda m: {**m, "examples": {**m["examples"], "prompt_length": m["examples"]["prompt_length"][:-5]}},
     "field 'examples.prompt_length' must be a list as long as examples.id"),
    (lambda m: {**m, "tokenizer": {**m["tokenizer"], "eos_id": None}}, "field 'tokenizer.eos_id' must be an integer"),
])
def test_a_damaged_meta_json_names_the_field(packed_copy, damage, message):
    from t3s_nemo.data.packed import PackedDataset

    meta = json.loads((packed_copy / "meta.json").read_text())
    (packed_copy / "meta.json").write_text(json.dumps(damage(meta)))
    with pytest.raises(T3SError, match=message):
        PackedDataset(packed_copy)


def test_rrt_on_a_run_without_snapshots_names_theta_f(tmp_path, monkeypatch, capsys):
    import sys

    from t3s_nemo.cli import main

    run = tmp_path / "run"
    (run / "snapshots").mkdir(parents=True)
    (run / "config.yaml").write_text("")
    a, b = snapshot(tmp_path / "a"), snapshot(tmp_path / "b")
    monkeypatch.setattr(sys, "argv", ["t3s", "rrt", str(run), "--base", str(a), "--bottleneck", str(b)])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 1
    assert capsys.readouterr().err.strip() == f"error: {run}/snapshots: no complete snapshots for theta_f (pass --final)"
