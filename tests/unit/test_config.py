"""The config tree: YAML + dotted overrides, and one-line errors that name the key."""

from __future__ import annotations

import pytest

from t3s_nemo.config import (
    CHOICES,
    NON_NEGATIVE,
    NON_NEGATIVE_IF_SET,
    POSITIVE,
    POSITIVE_IF_SET,
    Config,
    check_parallel,
    get,
    load_config,
    replace,
    save_config,
)
from t3s_nemo.errors import T3SError


@pytest.fixture
def yaml_file(tmp_path):
    def write(text: str):
        path = tmp_path / "cfg.yaml"
        path.write_text(text)
        return path

    return write


def error(path=None, overrides=None) -> str:
    with pytest.raises(T3SError) as info:
        load_config(path, overrides)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_defaults_without_a_file():
    cfg = load_config()
    assert cfg == Config()
    assert cfg.data.seq_length == 2048 and cfg.train.lr == 1e-5 and cfg.parallel.tp == 1


def test_yaml_then_overrides_with_types(yaml_file):
    path = yaml_file(
        "run_dir: runs/a\n"
        "data:\n  path: /data/packed\n  seq_length: 4096\n"
        "train:\n  lr: 3.0e-4\n  steps: 50\n  tensorboard: false\n"
        "checkpoint:\n  snapshot_window: [10, 20]\n"
    )
    cfg = load_config(path, ["train.lr=1e-5", "train.steps=7", "model.num_layers=4", "pipeline.baselines=[reverse,random]",
                             "data.answer_field=", "checkpoint.snapshot_window=null"])
    assert cfg.run_dir == "runs/a" and cfg.data.path == "/data/packed" and cfg.data.seq_length == 4096
    assert cfg.train.lr == 1e-5 and isinstance(cfg.train.lr, float)  # the override wins over the file
    assert cfg.train.steps == 7 and cfg.train.tensorboard is False
    assert cfg.model.num_layers == 4 and cfg.model.hidden_size is None
    assert cfg.pipeline.baselines == ["reverse", "random"]
    assert cfg.data.answer_field == ""
    assert cfg.checkpoint.snapshot_window is None
    assert isinstance(cfg, Config)


def test_saved_config_loads_back_equal(tmp_path):
    cfg = load_config(None, ["train.steps=9", "model.objective=dllm", "mask.rule=dllm", "checkpoint.snapshot_window=[1,5]"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_empty_yaml_is_the_defaults(yaml_file):
    assert load_config(yaml_file("")) == Config()


# ---- unknown keys --------------------------------------------------------------------------------
def test_unknown_key_in_yaml_is_named_with_a_suggestion(yaml_file):
    path = yaml_file("train:\n  lr: 1.0e-4\n  stpes: 3\n")
    assert error(path) == f"{path}: unknown config key 'train.stpes'; did you mean 'train.steps'?"


def test_unknown_section_in_yaml(yaml_file):
    path = yaml_file("trian:\n  steps: 3\n")
    assert error(path) == f"{path}: unknown config key 'trian'; did you mean 'train'?"


def test_unknown_key_without_close_match(yaml_file):
    path = yaml_file("train:\n  qqqqqqqqqqqqqqqq: 1\n")
    assert error(path) == f"{path}: unknown config key 'train.qqqqqqqqqqqqqqqq'"


@pytest.mark.parametrize(
    "item, key, close",
    [
        ("train.stesp=3", "train.stesp", "train.steps"),
        ("trian.steps=3", "trian.steps", "train.steps"),
        ("data.seq_lenght=128", "data.seq_lenght", "data.seq_length"),
        ("train.steps.x=3", "train.steps.x", "train.steps"),
    ],
)
def test_unknown_key_in_override_is_named_with_a_suggestion(item, key, close):
    assert error(None, [item]) == f"override '{item}': unknown config key '{key}'; did you mean '{close}'?"


def test_replace_checks_keys_like_overrides():
    cfg = load_config()
    with pytest.raises(T3SError, match=r"unknown config key 'train\.stesp'; did you mean 'train\.steps'\?$"):
        replace(cfg, {"train.stesp": 3})
    assert replace(cfg, {"train.steps": 3}).train.steps == 3 and cfg.train.steps == 100


# ---- types ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, key",
    [
        ("train:\n  steps: abc\n", "train.steps"),
        ("train:\n  steps: 1.5\n", "train.steps"),
        ("train:\n  lr: fast\n", "train.lr"),
        ("train:\n  tensorboard: maybe\n", "train.tensorboard"),
        ("checkpoint:\n  snapshot_window: [1, a]\n", "checkpoint.snapshot_window[1]"),
        ("train: [1, 2]\n", "train"),
        ("train: 3\n", "train"),
    ],
)
def test_wrong_type_in_yaml_names_the_key(yaml_file, text, key):
    path = yaml_file(text)
    assert error(path).startswith(f"{path}: wrong type for config key '{key}': ")


@pytest.mark.parametrize(
    "item, key",
    [("train.steps=abc", "train.steps"), ("train.lr=null", "train.lr"), ("data=3", "data"),
     ("model.num_layers=four", "model.num_layers"), ("parallel.sequence_parallel=2x", "parallel.sequence_parallel")],
)
def test_wrong_type_in_override_names_the_key(item, key):
    assert error(None, [item]).startswith(f"override '{item}': wrong type for config key '{key}': ")


def test_a_scalar_for_a_list_key_says_a_list_is_expected():
    assert error(None, ["pipeline.baselines=random"]) == (
        "override 'pipeline.baselines=random': wrong type for config key 'pipeline.baselines': expected a list "
        "such as [a, b] (or [] for none), got a str")


def test_malformed_override_and_yaml(yaml_file):
    assert error(None, ["train.steps"]) == "override 'train.steps': expected key=value (e.g. train.lr=1e-5)"
    assert error(None, ["=3"]) == "override '=3': empty key"
    path = yaml_file("train: {lr: 1\n")
    assert error(path) == f"{path}:2: invalid YAML: expected ',' or '}}', but got '<stream end>'"
    path = yaml_file("- a\n- b\n")
    assert error(path) == f"{path}: expected a mapping of config keys at the top level"
    assert error(path.with_name("missing.yaml")) == f"{path.with_name('missing.yaml')}: config file not found"
    # PyYAML keeps the last of two equal keys: a second train: block would silently drop the first's keys
    path = yaml_file("train:\n  steps: 3\nmodel:\n  preset: tiny\ntrain:\n  lr: 1.0e-3\n")
    assert error(path) == f"{path}:5: invalid YAML: duplicate key 'train'"
    path = yaml_file("train:\n  steps: 3\n  steps: 4\n")
    assert error(path) == f"{path}:3: invalid YAML: duplicate key 'steps'"
    assert error(path.parent) == f"{path.parent}: is a directory; give a config file (e.g. {path.parent}/sft.yaml)"


# ---- semantic checks -----------------------------------------------------------------------------
@pytest.mark.parametrize("key", sorted(CHOICES))
def test_choices_are_enforced(key):
    allowed = " | ".join(repr(a) if a == "" else a for a in CHOICES[key])
    assert error(None, [f"{key}=bogus"]) == f"config key '{key}': 'bogus' is not one of {allowed}"
    for value in CHOICES[key]:
        needs = ["model.objective=dllm"] if (key, value) == ("mask.rule", "dllm") else []  # dLLM targets
        assert get(load_config(None, [*needs, f"{key}={value}"]), key) == value


@pytest.mark.parametrize("key", POSITIVE)
def test_positive_keys_reject_zero(key):
    assert error(None, [f"{key}=0"]) == f"config key '{key}': must be > 0, got 0"


@pytest.mark.parametrize("key", POSITIVE_IF_SET)
def test_shape_overrides_reject_zero_and_keep_null(key):
    assert error(None, [f"{key}=0"]).startswith(f"config key '{key}': must be > 0 (or null for the preset's), got 0")
    assert get(load_config(None, [f"{key}=null"]), key) is None


@pytest.mark.parametrize("key", NON_NEGATIVE_IF_SET)
def test_zero_able_shape_overrides_reject_negatives(key):
    assert error(None, [f"{key}=-1"]) == f"config key '{key}': must be >= 0 (or null for the preset's), got -1"
    assert get(load_config(None, [f"{key}=0"]), key) == 0


def test_rotary_percent_is_a_fraction():
    assert error(None, ["model.rotary_percent=1.5"]).startswith("config key 'model.rotary_percent': the fraction")
    assert load_config(None, ["model.rotary_percent=0.5"]).model.rotary_percent == 0.5


@pytest.mark.parametrize("key", NON_NEGATIVE)
def test_non_negative_keys_reject_negatives(key):
    assert error(None, [f"{key}=-1"]).startswith(f"config key '{key}': must be >= 0, got -1")
    load_config(None, [f"{key}=0"])


def test_cross_key_checks():
    assert error(None, ["train.global_batch_size=7", "train.micro_batch_size=2"]) == (
        "config key 'train.global_batch_size': 7 is not a multiple of train.micro_batch_size=2"
    )
    assert error(None, ["generation.top_p=1.5"]) == "config key 'generation.top_p': must be in (0, 1], got 1.5"
    assert error(None, ["checkpoint.snapshot_window=[5,2]"]) == (
        "config key 'checkpoint.snapshot_window': expected [first_step, last_step], got [5, 2]"
    )
    assert error(None, ["checkpoint.snapshot_window=[1,2,3]"]).startswith("config key 'checkpoint.snapshot_window'")
    assert error(None, ["mask.channel=t3s_mask", "mask.rule=ar"]) == (
        "config keys 'mask.channel' and 'mask.rule': set one, not both"
    )


# ---- parallel layout -----------------------------------------------------------------------------
def test_check_parallel_data_parallel_size():
    cfg = load_config(None, ["parallel.tp=2", "parallel.pp=2", "train.global_batch_size=8"])
    assert [check_parallel(cfg, w) for w in (4, 8, 16)] == [1, 2, 4]
    cfg = load_config(None, ["parallel.cp=2", "train.micro_batch_size=2", "train.global_batch_size=12"])
    assert check_parallel(cfg, 6) == 3


def test_check_parallel_errors_name_the_keys():
    cfg = load_config(None, ["parallel.tp=2", "parallel.pp=2", "train.global_batch_size=8"])
    with pytest.raises(T3SError) as info:
        check_parallel(cfg, 6)
    assert str(info.value) == ("config keys 'parallel.tp/pp/cp': tp*pp*cp = 4 does not divide the world "
                               "size 6: start 4 processes or a multiple (--nproc-per-node, or srun tasks)")
    with pytest.raises(T3SError) as info:
        check_parallel(cfg, 12)
    assert str(info.value) == (
        "config key 'train.global_batch_size': 8 is not a multiple of micro_batch_size * data-parallel size = 1 * 3"
    )


def test_a_runs_relative_data_path_is_found_from_another_directory(tmp_path, monkeypatch):
    # runs made before data.path was recorded absolute: relative to where the run was started
    from t3s_nemo.config import Config, locate_run_data

    run = tmp_path / "proj" / "runs" / "x" / "sft"
    (run / "data").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = Config()
    cfg.run_dir, cfg.data.path = "runs/x/sft", "runs/x/sft/data"
    assert locate_run_data(cfg, run).data.path == str(run / "data")
    cfg.data.path = "runs/x/sft/nothing"  # nothing there either: left as recorded, for the error to name
    assert locate_run_data(cfg, run).data.path == "runs/x/sft/nothing"


def test_a_dataset_packed_inside_a_run_is_found_after_the_run_moved(tmp_path):
    from t3s_nemo.config import Config, locate_run_data

    run = tmp_path / "new" / "proj" / "runs" / "x" / "sft"
    (run / "data").mkdir(parents=True)
    for made in ("runs/x/sft", str(tmp_path / "old" / "proj" / "runs" / "x" / "sft")):  # as typed, or absolute
        cfg = Config()
        cfg.run_dir, cfg.data.path = made, str(tmp_path / "old" / "proj" / "runs" / "x" / "sft" / "data")
        assert locate_run_data(cfg, run).data.path == str(run / "data"), made
    cfg.data.path = "/elsewhere/data"  # not inside the run: left as recorded, for the error to name
    assert locate_run_data(cfg, run).data.path == "/elsewhere/data"
