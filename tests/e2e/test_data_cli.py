"""`t3s data pack / inspect / add-channel` as a user runs them: exit 0 on success; exit 1 with a single
`error:` line and no traceback on bad input. Each subprocess imports megatron-core (~10 s on this
machine), so one run per subcommand is a subprocess and the other cases call cli.main in-process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from t3s_nemo.data.packed import PackedDataset


def t3s_command() -> list[str]:
    script = Path(sys.executable).parent / "t3s"
    return [str(script)] if script.exists() else [sys.executable, "-m", "t3s_nemo.cli"]


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory, demo_records, demo_tokenizer_dir):
    """Start the CLI cases, overlapping them with packing the demo set in-process; name -> result."""
    root = tmp_path_factory.mktemp("cli")
    env = {**os.environ, "T3S_NO_PROGRESS": "1", "COLUMNS": "80"}

    def start(*args):
        return subprocess.Popen(t3s_command() + [str(a) for a in args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, cwd=root)

    src = root / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in demo_records[:30]))
    bad = root / "bad.jsonl"
    bad.write_text(json.dumps(demo_records[0]) + "\n" + '{"prompt": "x", "response": \n')
    (root / "out_bad").mkdir()
    pack = ["data", "pack", "--tokenizer", demo_tokenizer_dir, "--seq-length", "512"]
    procs = {"pack_ok": start(*pack, "-i", src, "-o", root / "out_ok")}

    packed = request.getfixturevalue("demo_packed")[0]
    add_bad = root / "add_bad"
    shutil.copytree(packed, add_bad)
    ds = PackedDataset(packed)
    rng = np.random.default_rng(0)
    delta = {eid: rng.normal(size=int(n)).astype(np.float32) for eid, n in zip(ds.ids, ds.sequence_lengths)}
    np.savez(root / "delta.npz", **delta)
    nan_values = {eid: v.tolist() for eid, v in delta.items()}
    nan_id = ds.ids[5]
    nan_values[nan_id][2] = float("nan")
    (root / "delta_nan.jsonl").write_text(
        "".join(json.dumps({"id": k, "values": v}) + "\n" for k, v in nan_values.items())
    )
    ctx = {
        "root": root, "src": src, "bad": bad, "packed": packed, "add_bad": add_bad, "delta": delta,
        "nan_id": nan_id, "add_bad_before": tree(add_bad), "tokenizer": demo_tokenizer_dir,
    }
    procs["inspect_json"] = start("data", "inspect", packed, "--json")
    procs["add_bad"] = start("data", "add-channel", add_bad, "--name", "delta", "--values", root / "delta_nan.jsonl")
    out = {}
    for name, p in procs.items():
        stdout, stderr = p.communicate(timeout=240)
        out[name] = subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)
    return out, ctx


def words(text: str) -> str:
    """Rich wraps long lines at the terminal width (80 here); compare text, not line breaks."""
    return " ".join(text.split())


def assert_one_error_line(result, expected: str):
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"error: {expected}"]
    assert result.stdout == ""


def test_pack_succeeds_and_reports(runs):
    results, ctx = runs
    r = results["pack_ok"]
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    ds = PackedDataset(ctx["root"] / "out_ok")
    assert ds.num_examples == 30
    text = words(r.stderr)
    assert text.startswith(
        f"packed 30 examples ({ds.num_tokens:,} tokens, {int(ds.meta['response_tokens']):,} response tokens) "
        f"into {ds.num_bins} bins"
    )
    assert text.endswith(f"wrote {ctx['root'] / 'out_ok'}")


def test_pack_bad_input_is_one_error_line(runs, monkeypatch, capsys):
    ctx = runs[1]
    out = ctx["root"] / "out_bad" / "ds"
    code, stdout, err = run_main(monkeypatch, capsys, "data", "pack", "-i", ctx["bad"], "--tokenizer", ctx["tokenizer"],
                                 "--seq-length", "512", "-o", out)
    assert code == 1 and stdout == ""
    assert err.splitlines() == [f"error: {ctx['bad']}:2: malformed JSON: Expecting value (column 29)"]
    assert list(out.parent.iterdir()) == []


def test_inspect_json_agrees_with_the_dataset(runs):
    results, ctx = runs
    r = results["inspect_json"]
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    ds = PackedDataset(ctx["packed"])
    lengths, prompts = ds.sequence_lengths, ds.prompt_lengths
    assert s["examples"] == ds.num_examples == 256
    assert s["bins"] == ds.num_bins
    assert s["seq_length"] == 512
    assert s["tokens"] == int(lengths.sum()) == ds.meta["num_tokens"]
    assert s["response_tokens"] == int((lengths - prompts).sum()) == ds.meta["response_tokens"]
    assert s["bin_fill"] == pytest.approx(lengths.sum() / (ds.num_bins * 512))
    assert s["examples_per_bin"] == pytest.approx(256 / ds.num_bins)
    assert s["example_tokens"] == {"min": int(lengths.min()), "mean": pytest.approx(float(lengths.mean())),
                                   "max": int(lengths.max())}
    assert s["tokenizer"] == ds.fingerprint
    assert s["channels"] == {"loss_mask": {"dtype": "uint8", "ones_fraction_of_response": 1.0}}


def test_add_channel_bad_values_is_one_error_line_and_changes_nothing(runs):
    results, ctx = runs
    assert_one_error_line(results["add_bad"], f"example id '{ctx['nan_id']}': value nan at position 2 is not finite")
    assert tree(ctx["add_bad"]) == ctx["add_bad_before"]


# ---- the same entry point in-process: more error cases without more interpreter start-ups --------
def run_main(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    from t3s_nemo.cli import main

    monkeypatch.setattr(sys, "argv", ["t3s", *map(str, args)])
    with pytest.raises(SystemExit) as info:
        main()
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_add_channel_succeeds_and_stays_aligned(runs, tmp_path, monkeypatch, capsys):
    ctx = runs[1]
    target = tmp_path / "ds"
    shutil.copytree(ctx["packed"], target)
    from t3s_nemo.cli import main

    args = ["data", "add-channel", target, "--name", "delta", "--values", ctx["root"] / "delta.npz"]
    monkeypatch.setattr(sys, "argv", ["t3s", *map(str, args)])
    main()  # returns normally (exit 0) on success
    out, err = capsys.readouterr()
    assert words(err) == f"added channel 'delta' (float32) for 256 examples to {target}"
    ds = PackedDataset(target)
    assert ds.channels["delta"] == {"dtype": "float32", "source": str(ctx["root"] / "delta.npz")}
    for i, eid in enumerate(ds.ids):
        np.testing.assert_array_equal(ds.read_example(i, "delta"), ctx["delta"][eid])


@pytest.mark.parametrize(
    "args, expected",
    [
        (("data", "inspect", "{root}/missing"), "{root}/missing: packed dataset directory not found"),
        (("data", "add-channel", "{packed}", "--name", "delta", "--values", "{root}/none.npz"),
         "{root}/none.npz: channel values file not found"),
        (("data", "add-channel", "{packed}", "--name", "tokens", "--values", "{root}/delta.npz"),
         "channel name 'tokens' is reserved"),
        (("data", "inspect", "{packed}", "--example", "nope"), "{packed}: no example with id 'nope'"),
        (("data", "inspect", "{packed}", "--mark", "delta"), "--mark delta: no such channel (channels: tokens, loss_mask)"),
        (("data", "inspect", "{packed}", "--mark", "tokens"),
         "--mark tokens: a channel of int32; --mark shows the 0s of a uint8 mask channel (loss_mask)"),
        (("data", "pack", "-i", "{src}", "--tokenizer", "{tokenizer}", "--seq-length", "512", "-o", "{packed}"),
         "{packed}: output directory exists (pass --overwrite to replace it)"),
        (("data", "pack", "-i", "{src}", "--tokenizer", "{tokenizer}", "--seq-length", "512", "-o", "{root}/x",
          "--on-overflow", "skip"), "--on-overflow 'skip': expected error, drop or truncate"),
        (("data", "pack", "-i", "{src}", "--tokenizer", "{tokenizer}", "--seq-length", "512", "-o", "{root}/x",
          "--template", "foo"), "--template 'foo': expected auto, chat or plain"),
        # --overwrite never deletes what the command reads
        (("data", "pack", "-i", "{src}", "--tokenizer", "{tokenizer}", "--seq-length", "512", "-o", "{src}",
          "--overwrite"), "{src}: output is the input {src}; replacing it would delete the input. Write to another "
                          "directory"),
        (("data", "pack", "-i", "{src}", "--tokenizer", "{tokenizer}", "--seq-length", "512", "-o", "{root}",
          "--overwrite"), "{root}: output contains the input {src}; replacing it would delete the input. Write to "
                          "another directory"),
        (("export", "{packed}", "--out", "{packed}", "--overwrite"),
         "{packed}: output is the input {packed}; replacing it would delete the input. Write to another directory"),
        (("export", "{packed}", "--out", "{root}/x", "--dtype", "fp16"), "--dtype fp16: expected auto, bf16 or fp32"),
        (("export", "{packed}", "--out", "{root}/x"), "{packed}: not a t3s checkpoint (no t3s.json)"),
        (("plan", "{root}"), "{root}: is a directory; give a config file (e.g. {root}/sft.yaml)"),
        (("demo", "--out", "{packed}", "--overwrite"),
         "--out {packed}: a non-empty directory that is not a demo run; choose another --out"),
        (("demo", "--out", "{root}/x", "--steps", "0"), "--steps 0: must be at least 1"),
        (("data", "inspect", "{src}"), "{src}: packed dataset directory not found; this is raw examples: pack them "
                                       "with `t3s data pack`, or give them as data.input (with data.tokenizer) and a "
                                       "run packs them into run_dir/data"),
        (("demo", "--out", "{root}/x", "--student", "{root}/nope"),
         "--student {root}/nope: not a Hugging Face model directory (no config.json)"),
        (("eval", "compare", "{packed}/meta.json"),
         "{packed}/meta.json: not a `t3s eval` results.json (expected 'benchmarks' and 'overall')"),
    ],
)
def test_cli_errors_in_process(runs, monkeypatch, capsys, args, expected):
    ctx = runs[1]
    fmt = {k: ctx[k] for k in ("root", "packed", "src", "tokenizer")}
    before = tree(ctx["packed"])
    code, out, err = run_main(monkeypatch, capsys, *(a.format(**fmt) for a in args))
    assert code == 1
    assert err.splitlines() == [f"error: {expected.format(**fmt)}"]
    assert not (ctx["root"] / "x").exists()
    assert Path(ctx["src"]).is_file() and tree(ctx["packed"]) == before  # the inputs are untouched


def test_cli_usage_error_exits_2_without_traceback(monkeypatch, capsys):
    code, _, err = run_main(monkeypatch, capsys, "data", "pack", "--seq-length", "x")
    assert code == 2 and "Traceback" not in err


def test_inspect_decodes_an_example(runs, monkeypatch, capsys):
    from t3s_nemo.cli import main

    ctx = runs[1]
    ds = PackedDataset(ctx["packed"])
    monkeypatch.setattr(sys, "argv", ["t3s", "data", "inspect", str(ctx["packed"]), "--example", ds.ids[3]])
    main()  # returns normally on success
    out = capsys.readouterr().out
    assert f"example 3 id={ds.ids[3]} answer={ds.answers[3]!r} ({int(ds.sequence_lengths[3])} tokens)" in out
    assert f"{ds.num_examples:,} / {ds.num_bins:,}" in out
    # captured, not a colour terminal: the prompt is marked in text, since dim would not show
    prompt = out.split("<<prompt: ", 1)[1].split(">>", 1)[0]
    assert prompt.rstrip().endswith("<|im_start|>assistant")


def test_error_text_is_printed_verbatim(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "[data]" / "in.jsonl"
    code, _, err = run_main(monkeypatch, capsys, "data", "pack", "-i", missing, "--tokenizer", tmp_path,
                            "--seq-length", "8", "-o", tmp_path / "o")
    assert code == 1 and err.splitlines() == [f"error: {missing}: input not found"]


def test_demo_overwrite_never_deletes_its_student(tmp_path, monkeypatch, capsys):
    """--overwrite deletes --out; a --student inside it is refused first, and nothing is removed."""
    out = tmp_path / "demo"
    (out / "student").mkdir(parents=True)
    (out / "student" / "config.json").write_text("{}")
    (out / "config.yaml").write_text("run_dir: x\n")  # looks like an earlier demo run
    code, _, err = run_main(monkeypatch, capsys, "demo", "--out", str(out), "--student", str(out / "student"),
                            "--overwrite")
    assert code == 1
    assert err.splitlines() == [f"error: {out}: output contains the input {out / 'student'}; replacing it would "
                                "delete the input. Write to another directory"]
    assert (out / "student" / "config.json").is_file() and (out / "config.yaml").is_file()


def test_demo_refuses_to_show_an_earlier_runs_results_under_new_settings(tmp_path, monkeypatch, capsys):
    # every stage of an existing demo run is "done already": a rerun with another seed would print the
    # earlier seed's numbers
    from t3s_nemo.config import load_config, save_config
    from t3s_nemo.demo.run import demo_overrides
    from t3s_nemo.demo.student import demo_config

    out = tmp_path / "demo"
    out.mkdir()
    save_config(load_config(demo_config(), demo_overrides(out, None, 1, None)), out / "config.yaml")
    saved = (out / "config.yaml").read_text()
    code, _, err = run_main(monkeypatch, capsys, "demo", "--out", out, "--seed", "2")
    assert code == 1 and "Traceback" not in err
    assert err.startswith(f"error: --out {out} holds a demo run made with other settings (seed: 1 -> 2)")
    assert "--overwrite" in err and (out / "config.yaml").read_text() == saved and len(list(out.iterdir())) == 1


def test_the_same_demo_settings_spelled_another_way_are_the_same(tmp_path, monkeypatch):
    # --out relative or absolute, --steps 40 or its default: not a change that the demo must refuse
    from t3s_nemo.config import load_config
    from t3s_nemo.demo.run import _settings, demo_overrides
    from t3s_nemo.demo.student import demo_config

    monkeypatch.chdir(tmp_path)
    made = _settings(load_config(demo_config(), demo_overrides(Path("demo"), None, 1, None)))
    assert made == _settings(load_config(demo_config(), demo_overrides(tmp_path / "demo", 40, 1, None)))
    assert made != _settings(load_config(demo_config(), demo_overrides(Path("demo"), 20, 1, None)))


def test_changed_keys_lists_each_leaf_that_differs():
    from t3s_nemo.config import changed_keys, load_config

    tiny = Path(__file__).resolve().parents[2] / "configs" / "tiny" / "sft.yaml"
    a = load_config(tiny)
    b = load_config(tiny, ["train.seed=7", "parallel.tp=2"])
    assert changed_keys(a, a) == []
    assert changed_keys(a, b) == ["parallel.tp: 1 -> 2", "train.seed: 1234 -> 7"]
    assert changed_keys(a, b, ignore=("train.seed",)) == ["parallel.tp: 1 -> 2"]


def test_a_pipeline_rerun_names_the_keys_that_changed(tmp_path):
    from t3s_nemo.config import load_config, save_config

    tiny = Path(__file__).resolve().parents[2] / "configs" / "tiny" / "sft.yaml"
    root = tmp_path / "p"
    root.mkdir()
    save_config(load_config(tiny, [f"run_dir={root}"]), root / "config.yaml")
    cli = [sys.executable, "-m", "t3s_nemo.cli"]
    # run_dir spelled another way is not a change; the seed is (the missing dataset then ends the run)
    p = subprocess.run([*cli, "pipeline", str(tiny), "run_dir=p", "train.seed=7", f"data.path={tmp_path / 'none'}"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "T3S_NO_PROGRESS": "1"})
    err = " ".join(p.stderr.split())
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert "was made with another config" in err
    assert "Changed: data.path: '' -> " in err and "; train.seed: 1234 -> 7" in err and "run_dir" not in err.split("Changed:")[1]


def test_pack_takes_the_bundled_demo_files_by_pkg_path(tmp_path, monkeypatch, capsys, demo_tokenizer_dir):
    """`pkg:` names files shipped in t3s_nemo, as in configs/tiny/sft.yaml: the same on the command line."""
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"prompt": "What is 2 + 3?", "response": "5", "answer": "5"}) + "\n")
    from t3s_nemo.cli import main
    from t3s_nemo.data.tokenizer import fingerprint, load_tokenizer

    monkeypatch.setattr(sys, "argv", ["t3s", "data", "pack", "-i", str(src), "--tokenizer", "pkg:assets/demo/tokenizer",
                                      "--seq-length", "64", "--output", str(tmp_path / "ds")])
    main()  # returns on success
    out, err = capsys.readouterr()
    assert "packed 1 examples" in out + err, (out, err)
    assert PackedDataset(tmp_path / "ds").fingerprint == fingerprint(load_tokenizer(demo_tokenizer_dir))


def test_eval_compare_labels_and_damaged_results(tmp_path, monkeypatch, capsys):
    """Labels split at the first '=', paths may hold '=', two results never share a row, and a results
    file with a wrong entry is named with the key."""
    s = {"problems": 2, "avg@k": 0.5, "pass@k": 1.0, "mean_tokens": 10.0}
    good = {"benchmarks": {"aime": s}, "overall": s}
    for d in ("lr=1e-5", "a", "b/a"):
        (tmp_path / d).mkdir(parents=True, exist_ok=True)
        (tmp_path / d / "results.json").write_text(json.dumps(good))
    (tmp_path / "bad.json").write_text(json.dumps({"benchmarks": {"aime": {**s, "avg@k": "x"}}, "overall": s}))
    (tmp_path / "bad2.json").write_text(json.dumps({"benchmarks": {}, "overall": 5}))
    from t3s_nemo.cli import main

    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr(sys, "argv", ["t3s", "eval", "compare", str(tmp_path / "lr=1e-5" / "results.json"),
                                      f"mine={tmp_path / 'lr=1e-5' / 'results.json'}"])
    main()
    out = capsys.readouterr().out
    assert "lr=1e-5" in out and "mine" in out and "50.00 (100.0) / 10" in out
    for args, expected in (
        ([tmp_path / "a" / "results.json", tmp_path / "b" / "a" / "results.json"],
         f"{tmp_path / 'b' / 'a' / 'results.json'}: label 'a' is also {tmp_path / 'a' / 'results.json'}'s; "
         "name them: LABEL=PATH"),
        ([tmp_path / "bad.json"], f"{tmp_path / 'bad.json'}: 'benchmarks.aime.avg@k' must be a number, got 'x'"),
        ([tmp_path / "bad2.json"], f"{tmp_path / 'bad2.json'}: 'overall' must be an object, got int"),
    ):
        code, _, err = run_main(monkeypatch, capsys, "eval", "compare", *args)
        assert code == 1 and err.splitlines() == [f"error: {expected}"]
