"""Mixing the packed datasets of several teachers: every mixed example is its source example bit for bit
(tokens, loss_mask, its own T3S mask), ratios give exact counts, per-prompt random keeps one trace per
prompt, meta.json records the teacher, and a refused mix names the input and leaves no output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from t3s_nemo.data.dataset import PackedBins
from t3s_nemo.data.mix import mix, parse_inputs, parse_ratios, ratio_counts
from t3s_nemo.data.pack import PackOptions, first_fit_decreasing, pack
from t3s_nemo.data.packed import PackedDataset, load_channel_file
from t3s_nemo.errors import T3SError

SEQ = 512
R1_ROWS = range(0, 160)  # teacher r1: prompts 0..159
QWQ_ROWS = range(64, 256)  # teacher qwq: prompts 64..255, other response text; shared: 64..159
QWQ_EXTRA = (100, 101, 200)  # qwq has a second trace of these prompts


def add_masks(path, seed, delta=True):
    """A random uint8 t3s_mask over response tokens (and a float delta over all tokens)."""
    ds = PackedDataset(path)
    rng = np.random.default_rng(seed)
    resp = ds.sequence_lengths - ds.prompt_lengths
    ds.add_channel("t3s_mask", {e: rng.integers(0, 2, size=int(resp[i])) for i, e in enumerate(ds.ids)},
                   dtype="uint8", span="response", info={"rule": "ar", "seed": seed})
    if delta:
        ds.add_channel("delta", {e: rng.normal(size=int(ds.sequence_lengths[i])) for i, e in enumerate(ds.ids)},
                       dtype="float32", span="full")
    return path


def pack_rows(rows, out, tok, seq=SEQ):
    src = out.parent / f"{out.name}.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pack([src], tok, out, PackOptions(seq_length=seq))
    return out


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, demo_records, demo_tokenizer_dir):
    """{'r1': dir, 'qwq': dir}: overlapping prompts, different responses, each with its own mask."""
    root = tmp_path_factory.mktemp("teachers")
    r1 = [demo_records[i] for i in R1_ROWS]
    qwq = [dict(demo_records[i], response="Hmm. " + demo_records[i]["response"]) for i in QWQ_ROWS]
    qwq += [dict(demo_records[i], id=demo_records[i]["id"] + "-b", response="Okay. " + demo_records[i]["response"])
            for i in QWQ_EXTRA]
    return {
        "r1": add_masks(pack_rows(r1, root / "r1", demo_tokenizer_dir), seed=1),
        "qwq": add_masks(pack_rows(qwq, root / "qwq", demo_tokenizer_dir), seed=2),
    }


@pytest.fixture(scope="module")
def prompt_of(demo_records):
    """example id (either teacher) -> prompt text, the oracle for prompt identity."""
    out = {r["id"]: r["prompt"] for r in demo_records}
    out.update({demo_records[i]["id"] + "-b": demo_records[i]["prompt"] for i in QWQ_EXTRA})
    return out


def inputs(teachers, *names):
    return [(n, teachers[n]) for n in (names or ("r1", "qwq"))]


def check_mixed(out, teachers, channels=("tokens", "loss_mask", "t3s_mask")) -> PackedDataset:
    """Every example of the mix equals its source example bit for bit; meta columns carried; bins FFD."""
    ds = PackedDataset(out)  # layout checks
    src = {t: PackedDataset(p) for t, p in teachers.items()}
    cols = ds.meta["examples"]
    assert len(set(ds.ids)) == ds.num_examples
    for i in range(ds.num_examples):
        t, sid = cols["teacher"][i], cols["source_id"][i]
        assert ds.ids[i] == f"{t}/{sid}"
        s = src[t]
        j = s.index_of(sid)
        for name in channels:
            got, want = ds.read_example(i, name), s.read_example(j, name)
            assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), (ds.ids[i], name)
        for col in ("answer", "prompt_length", "source"):
            assert cols[col][i] == s.meta["examples"][col][j], (ds.ids[i], col)
    assert sorted(ds.channels) == sorted(channels)
    assert ds.seq_length == SEQ
    lengths = ds.sequence_lengths
    for b in range(ds.num_bins):
        assert int(lengths[list(ds.bin_range(b))].sum()) <= SEQ
    assert ds.num_bins == len(first_fit_decreasing(lengths, SEQ))
    assert ds.fingerprint == src["r1"].fingerprint
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    m = ds.meta
    assert m["num_examples"] == ds.num_examples and m["num_tokens"] == ds.num_tokens
    assert m["response_tokens"] == int((lengths - ds.prompt_lengths).sum())
    return ds


def no_leftovers(parent, name):
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")] == []


# ---- per-prompt 'all' ---------------------------------------------------------------------------
def test_all_keeps_every_trace_bit_for_bit(teachers, tmp_path):
    out = tmp_path / "mix"
    s = mix(inputs(teachers), out, per_prompt="all", channels=["delta"])
    ds = check_mixed(out, teachers, ("tokens", "loss_mask", "t3s_mask", "delta"))
    n_r1, n_qwq = len(R1_ROWS), len(QWQ_ROWS) + len(QWQ_EXTRA)
    assert s["counts"] == {"r1": n_r1, "qwq": n_qwq} and ds.num_examples == n_r1 + n_qwq
    assert s["prompts"] == 256 and s["shared_prompts"] == len(set(R1_ROWS) & set(QWQ_ROWS))
    src_ids = {(t, i) for t in teachers for i in PackedDataset(teachers[t]).ids}
    assert set(zip(ds.meta["examples"]["teacher"], ds.meta["examples"]["source_id"])) == src_ids
    # the same prompt from two teachers gives two examples with different responses and masks
    a, b = ds.index_of("r1/train-0100"), ds.index_of("qwq/train-0100")
    pl = int(ds.prompt_lengths[a])
    assert ds.read_example(a)[:pl].tolist() == ds.read_example(b)[:pl].tolist()
    assert ds.read_example(a).tolist() != ds.read_example(b).tolist()
    mix_meta = ds.meta["mix"]
    assert [e["teacher"] for e in mix_meta["inputs"]] == ["r1", "qwq"]
    assert mix_meta["per_prompt"] == "all" and mix_meta["seed"] == 0 and mix_meta["mask_channel"] == "t3s_mask"
    assert ds.channels["t3s_mask"]["inputs"] == {"r1": {"rule": "ar", "seed": 1}, "qwq": {"rule": "ar", "seed": 2}}


def test_default_is_all_and_mask_channel_can_be_left_out(teachers, tmp_path):
    s = mix(inputs(teachers), tmp_path / "mix", mask_channel=None)
    assert s["counts"] == {"r1": len(R1_ROWS), "qwq": len(QWQ_ROWS) + len(QWQ_EXTRA)}
    check_mixed(tmp_path / "mix", teachers, ("tokens", "loss_mask"))


# ---- ratios -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "ratios,num,want",
    [
        ({"r1": 0.25, "qwq": 0.75}, None, {"r1": 65, "qwq": 195}),  # qwq (195) limits: 260 in all
        ({"r1": 1, "qwq": 2}, None, {"r1": 97, "qwq": 195}),  # 292 in all: 97.33 / 194.67 -> 97 / 195
        ({"r1": 0.5, "qwq": 0.5}, None, {"r1": 160, "qwq": 160}),  # r1 (160) limits
        ({"r1": 0.5, "qwq": 0.5}, 7, {"r1": 4, "qwq": 3}),  # 3.5 / 3.5: the tie goes to the first input
        ({"r1": 0.0, "qwq": 1.0}, None, {"r1": 0, "qwq": 195}),
        ({"r1": 3, "qwq": 1}, 100, {"r1": 75, "qwq": 25}),
    ],
)
def test_ratios_give_exact_counts_without_replacement(teachers, tmp_path, ratios, num, want):
    out = tmp_path / "mix"
    s = mix(inputs(teachers), out, ratios=ratios, num_examples=num, seed=3)
    assert s["counts"] == want
    ds = check_mixed(out, teachers)
    got = {t: ds.meta["examples"]["teacher"].count(t) for t in want}
    assert got == want and ds.num_examples == sum(want.values())
    assert ds.meta["mix"]["ratios"] == ratios and ds.meta["mix"]["counts"] == want


def test_ratio_sampling_is_seeded(teachers, tmp_path):
    ids = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        mix(inputs(teachers), tmp_path / name, ratios={"r1": 0.5, "qwq": 0.5}, num_examples=60, seed=seed)
        ids[name] = PackedDataset(tmp_path / name).ids
    assert ids["a"] == ids["b"]
    assert set(ids["a"]) != set(ids["c"])


def test_ratio_counts_largest_remainder():
    assert ratio_counts({"a": 10, "b": 10, "c": 10}, {"a": 1, "b": 1, "c": 1}) == {"a": 10, "b": 10, "c": 10}
    assert ratio_counts({"a": 10, "b": 10, "c": 10}, {"a": 1, "b": 1, "c": 1}, 10) == {"a": 4, "b": 3, "c": 3}
    assert ratio_counts({"a": 100, "b": 3}, {"a": 0.9, "b": 0.1}) == {"a": 27, "b": 3}
    assert ratio_counts({"a": 5, "b": 1000}, {"a": 0.1, "b": 0.9}, 17) == {"a": 2, "b": 15}  # 1.7 / 15.3
    with pytest.raises(T3SError, match="at most 30"):
        ratio_counts({"a": 100, "b": 3}, {"a": 0.9, "b": 0.1}, 31)


# ---- per-prompt 'random' ------------------------------------------------------------------------
def test_per_prompt_random_keeps_one_trace_per_prompt(teachers, tmp_path, prompt_of):
    out = tmp_path / "mix"
    s = mix(inputs(teachers), out, per_prompt="random", seed=5)
    ds = check_mixed(out, teachers)
    cols = ds.meta["examples"]
    prompts = [prompt_of[sid] for sid in cols["source_id"]]
    assert len(prompts) == len(set(prompts)) == 256  # every prompt of either teacher, exactly once
    assert s["prompts"] == 256 and sum(s["counts"].values()) == 256
    # prompts only one teacher has come from that teacher; shared ones from either, both used
    by_prompt = {prompt_of[sid]: (t, sid) for t, sid in zip(cols["teacher"], cols["source_id"])}
    shared = set(R1_ROWS) & set(QWQ_ROWS)
    recs = {int(sid.split("-")[1]): t for t, sid in by_prompt.values()}
    assert all(recs[i] == "r1" for i in R1_ROWS if i not in shared)
    assert all(recs[i] == "qwq" for i in QWQ_ROWS if i not in shared)
    picked = [recs[i] for i in shared]
    assert 0 < picked.count("r1") < len(shared)
    # the same prompt token ids for one prompt, whichever teacher it came from
    for i in range(ds.num_examples):
        t = cols["teacher"][i]
        src = PackedDataset(teachers[t])
        j = src.index_of(cols["source_id"][i])
        got, want = ds.read_example(i)[: ds.prompt_lengths[i]], src.read_example(j)[: src.prompt_lengths[j]]
        assert got.tobytes() == want.tobytes()
    # same seed, same mix; another seed, another pick
    mix(inputs(teachers), tmp_path / "again", per_prompt="random", seed=5)
    assert PackedDataset(tmp_path / "again").ids == ds.ids
    mix(inputs(teachers), tmp_path / "other", per_prompt="random", seed=6)
    assert set(PackedDataset(tmp_path / "other").ids) != set(ds.ids)


def test_per_prompt_random_with_several_traces_in_one_teacher(teachers, tmp_path, prompt_of):
    # qwq alone holds two traces of prompts 100, 101, 200: one of them is kept
    mix(inputs(teachers, "qwq"), tmp_path / "mix", per_prompt="random", seed=0)
    ds = PackedDataset(tmp_path / "mix")
    prompts = [prompt_of[sid] for sid in ds.meta["examples"]["source_id"]]
    assert len(prompts) == len(set(prompts)) == len(QWQ_ROWS)


# ---- the mix is an ordinary packed dataset ------------------------------------------------------
def test_mixed_dataset_trains_and_takes_new_channels(teachers, tmp_path):
    out = tmp_path / "mix"
    mix(inputs(teachers), out, per_prompt="random", seed=0)
    ds = PackedDataset(out)
    bins = PackedBins(ds, weight_channels=("loss_mask", "t3s_mask"))
    for b in range(ds.num_bins):
        sample = bins[b]
        parts = ds.read_bin(b, ("loss_mask", "t3s_mask"))
        want = sum(float((lm[1:] * m[1:]).sum()) for lm, m in zip(parts["loss_mask"], parts["t3s_mask"]))
        assert float(sample["loss_weight"].sum()) == want
    # ids with a '/' round-trip through a values file (e.g. for profiling the mix)
    vals = {e: np.arange(int(ds.sequence_lengths[i]), dtype=np.float32) for i, e in enumerate(ds.ids)}
    np.savez(tmp_path / "v.npz", **vals)
    ds.add_channel("pos", load_channel_file(tmp_path / "v.npz"), dtype="float32", span="full")
    i = ds.index_of("r1/train-0000") if "r1/train-0000" in ds.ids else 0
    assert PackedDataset(out).read_example(i, "pos").tolist() == list(range(int(ds.sequence_lengths[i])))


def test_seq_length_must_agree_or_be_given(teachers, tmp_path, demo_records, demo_tokenizer_dir):
    long = add_masks(pack_rows(demo_records[:20], tmp_path / "long", demo_tokenizer_dir, seq=1024), 7, delta=False)
    both = [("r1", teachers["r1"]), ("long", long)]
    with pytest.raises(T3SError, match=r"seq_length differ \(r1: 512, long: 1024\)"):
        mix(both, tmp_path / "mix")
    assert not (tmp_path / "mix").exists()
    s = mix(both, tmp_path / "mix", seq_length=512)
    assert s["seq_length"] == 512 and PackedDataset(tmp_path / "mix").seq_length == 512
    with pytest.raises(T3SError, match=r"example '.*' has \d+ tokens, more than --seq-length 100"):
        mix(both, tmp_path / "small", seq_length=100)
    assert not (tmp_path / "small").exists()


# ---- refusals -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def other_tokenizer(tmp_path_factory, demo_tokenizer_dir):
    """The demo tokenizer with one more added token: another fingerprint."""
    out = tmp_path_factory.mktemp("tok2")
    for f in demo_tokenizer_dir.iterdir():
        shutil.copy(f, out / f.name)
    spec = json.loads((out / "tokenizer.json").read_text())
    next_id = max([a["id"] for a in spec["added_tokens"]] + list(spec["model"]["vocab"].values())) + 1
    spec["added_tokens"].append({"id": next_id, "content": "<|extra|>", "single_word": False, "lstrip": False,
                                 "rstrip": False, "normalized": False, "special": True})
    (out / "tokenizer.json").write_text(json.dumps(spec))
    return out


def test_mismatched_tokenizer_is_refused(teachers, tmp_path, demo_records, other_tokenizer):
    other = add_masks(pack_rows(demo_records[:20], tmp_path / "other", other_tokenizer), 3, delta=False)
    assert PackedDataset(other).fingerprint != PackedDataset(teachers["r1"]).fingerprint
    with pytest.raises(T3SError, match=r"input 'qwen' \(.*other\): tokenizer fingerprint .* differs from input 'r1'"):
        mix([("r1", teachers["r1"]), ("qwen", other)], tmp_path / "mix", per_prompt="random")
    assert not (tmp_path / "mix").exists() and no_leftovers(tmp_path, "mix")


def test_missing_mask_channel_is_refused(teachers, tmp_path, demo_records, demo_tokenizer_dir):
    bare = pack_rows(demo_records[:20], tmp_path / "bare", demo_tokenizer_dir)
    with pytest.raises(T3SError, match=r"input 'qwq' \(.*bare\): no channel 't3s_mask' \(it has tokens, loss_mask\)"):
        mix([("r1", teachers["r1"]), ("qwq", bare)], tmp_path / "mix", ratios={"r1": 0.5, "qwq": 0.5})
    assert not (tmp_path / "mix").exists() and no_leftovers(tmp_path, "mix")
    with pytest.raises(T3SError, match=r"input 'r1' .*: no channel 'other_mask'"):
        mix(inputs(teachers), tmp_path / "mix", mask_channel="other_mask")
    with pytest.raises(T3SError, match=r"input 'qwq' .*: no channel 'delta'"):
        mix([("r1", teachers["r1"]), ("qwq", add_masks(bare, 0, delta=False))], tmp_path / "mix", channels=["delta"])
    assert not (tmp_path / "mix").exists()


def test_existing_output_is_refused_unless_overwrite(teachers, tmp_path):
    out = tmp_path / "mix"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(T3SError, match="output directory exists"):
        mix(inputs(teachers), out, per_prompt="random")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    mix(inputs(teachers), out, per_prompt="random", overwrite=True)
    assert not (out / "keep.txt").exists()
    check_mixed(out, teachers)
    with pytest.raises(T3SError, match="is input 'r1'"):
        mix(inputs(teachers), teachers["r1"], overwrite=True)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(ratios={"r1": 1, "qwq": 1}, per_prompt="random"), "not both"),
        (dict(per_prompt="first"), "--per-prompt 'first': expected random or all"),
        (dict(ratios={"r1": 1, "qwq": 1, "ds": 1}), "no --input named 'ds'"),
        (dict(ratios={"r1": 1}), "no --ratio for input 'qwq'"),
        (dict(ratios={"r1": -1, "qwq": 1}), "finite number >= 0"),
        (dict(ratios={"r1": float("nan"), "qwq": 1}), "finite number >= 0"),
        (dict(ratios={"r1": 0, "qwq": 0}), "at least one ratio must be positive"),
        (dict(ratios={"r1": 1, "qwq": 1}, num_examples=400), "at most 320"),
        (dict(per_prompt="random", num_examples=300), "selects only 256"),
        (dict(num_examples=0), "at least 1"),
        (dict(mask_channel="loss_mask"), "always carried"),
        (dict(seq_length=1), "at least 2"),
    ],
)
def test_bad_options_are_refused(teachers, tmp_path, kwargs, match):
    with pytest.raises(T3SError, match=match):
        mix(inputs(teachers), tmp_path / "mix", **kwargs)
    assert not (tmp_path / "mix").exists() and no_leftovers(tmp_path, "mix")


def test_bad_inputs_are_refused(teachers, tmp_path):
    with pytest.raises(T3SError, match="at least one"):
        mix([], tmp_path / "mix")
    with pytest.raises(T3SError, match="teacher 'r1' is given twice"):
        mix([("r1", teachers["r1"]), ("r1", teachers["qwq"])], tmp_path / "mix")
    with pytest.raises(T3SError, match="teacher name 'a/b'"):
        mix([("a/b", teachers["r1"])], tmp_path / "mix")
    with pytest.raises(T3SError, match=r"input 'x': .*nope: packed dataset directory not found"):
        mix([("r1", teachers["r1"]), ("x", tmp_path / "nope")], tmp_path / "mix")
    assert not (tmp_path / "mix").exists()


def test_cli_argument_parsing():
    assert parse_inputs(["r1=a/b", "qwq=/c=d"]) == [("r1", Path("a/b")), ("qwq", Path("/c=d"))]
    assert parse_ratios(["r1=0.25", "qwq=3"]) == {"r1": 0.25, "qwq": 3.0}
    for bad, match in ((["dir"], "expected NAME=VALUE"), (["=dir"], "expected NAME=VALUE"), (["r1="], "NAME=VALUE")):
        with pytest.raises(T3SError, match=match):
            parse_inputs(bad)
    with pytest.raises(T3SError, match="'x' is not a number"):
        parse_ratios(["r1=x"])
    with pytest.raises(T3SError, match="given twice"):
        parse_ratios(["r1=1", "r1=2"])
