"""Extra per-token channels: values keyed by example id land on the right tokens of the right bins, in
every file format and dtype, and a refused add-channel names the example and leaves the dataset as it was."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from t3s_nemo.data.dataset import PackedBins
from t3s_nemo.data.inspect import summary
from t3s_nemo.data.packed import PackedDataset, load_channel_file
from t3s_nemo.errors import T3SError


def snapshot(path):
    """Relative path -> sha256 of every file under a directory."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*")) if p.is_file()
    }


def full_values(ds: PackedDataset, seed=0) -> dict[str, np.ndarray]:
    """Distinct float values per token, keyed by id, in an order unlike the dataset's."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in rng.permutation(ds.num_examples):
        out[ds.ids[i]] = (rng.normal(size=int(ds.sequence_lengths[i])) + 10 * i).astype(np.float32)
    return out


def response_values(ds: PackedDataset, seed=1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        ds.ids[i]: rng.integers(0, 2, size=int(ds.sequence_lengths[i] - ds.prompt_lengths[i])).astype(np.uint8)
        for i in rng.permutation(ds.num_examples)
    }


def write_npz(path, values):
    np.savez(path, **values)
    return path


def write_values_jsonl(path, values):
    path.write_text("".join(json.dumps({"id": k, "values": v.tolist()}) + "\n" for k, v in values.items()))
    return path


def write_parquet(path, values):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": list(values), "values": [v.tolist() for v in values.values()]}), path)
    return path


def check_aligned(ds: PackedDataset, name: str, want: dict[str, np.ndarray]):
    for i, eid in enumerate(ds.ids):
        got = ds.read_example(i, name)
        assert len(got) == len(ds.read_example(i)), eid
        np.testing.assert_array_equal(got, want[eid], err_msg=eid)
    for b in range(ds.num_bins):  # bins of the new channel are the bins of tokens
        parts = ds.read_bin(b, ("tokens", name))
        assert [len(p) for p in parts[name]] == [len(p) for p in parts["tokens"]]


@pytest.mark.parametrize("fmt", ["npz", "jsonl", "parquet"])
def test_float32_full_span_from_each_file_format(packed_copy, tmp_path, fmt):
    ds = PackedDataset(packed_copy)
    values = full_values(ds)
    writer = {"npz": write_npz, "jsonl": write_values_jsonl, "parquet": write_parquet}[fmt]
    src = writer(tmp_path / f"delta.{fmt}", values)
    entry = ds.add_channel("delta", load_channel_file(src), dtype="float32", span="full", info={"source": str(src)})
    assert entry == {"dtype": "float32", "source": str(src)}
    reopened = PackedDataset(packed_copy)  # the layout checks on open pass
    assert reopened.channels["delta"] == entry
    assert reopened.read_example(0, "delta").dtype == np.float32
    check_aligned(reopened, "delta", {k: v.astype(np.float32) for k, v in values.items()})


@pytest.mark.parametrize("fmt", ["npz", "jsonl"])
def test_uint8_response_span_gets_fill_on_the_prompt(packed_copy, tmp_path, fmt):
    ds = PackedDataset(packed_copy)
    values = response_values(ds)
    writer = write_npz if fmt == "npz" else write_values_jsonl
    src = writer(tmp_path / f"m.{fmt}", values)
    ds.add_channel("t3s_mask", load_channel_file(src), dtype="uint8", span="response", fill=7)
    ds = PackedDataset(packed_copy)
    want = {}
    for i, eid in enumerate(ds.ids):
        want[eid] = np.concatenate([np.full(int(ds.prompt_lengths[i]), 7, np.uint8), values[eid]])
    check_aligned(ds, "t3s_mask", want)
    assert ds.read_example(0, "t3s_mask").dtype == np.uint8


def test_auto_span_picks_full_or_response_per_example(packed_copy):
    ds = PackedDataset(packed_copy)
    full, resp = full_values(ds), response_values(ds)
    mixed = {eid: (full[eid] if i % 2 else resp[eid].astype(np.float32)) for i, eid in enumerate(ds.ids)}
    ds.add_channel("mixed", mixed, dtype="float32")
    ds = PackedDataset(packed_copy)
    for i, eid in enumerate(ds.ids):
        got = ds.read_example(i, "mixed")
        if i % 2:
            np.testing.assert_array_equal(got, full[eid])
        else:
            p = int(ds.prompt_lengths[i])
            assert (got[:p] == 0).all() and (got[p:] == resp[eid]).all()


def test_channels_reach_the_training_view_shifted_like_labels(packed_copy):
    ds = PackedDataset(packed_copy)
    delta, mask = full_values(ds), response_values(ds)
    ds.add_channel("delta", delta, dtype="float32", span="full")
    ds.add_channel("t3s_mask", mask, dtype="uint8", span="response")
    ds = PackedDataset(packed_copy)
    bins = PackedBins(ds, weight_channels=("loss_mask", "t3s_mask"), value_channels=("delta",))
    for b in range(ds.num_bins):
        item = bins[b]
        off = 0
        for i in ds.bin_range(b):
            eid, n, p = ds.ids[i], int(ds.sequence_lengths[i]), int(ds.prompt_lengths[i])
            # position t predicts token t+1, so it carries token t+1's channel values
            np.testing.assert_array_equal(item["value_delta"][off : off + n - 1].numpy(), delta[eid][1:])
            want_w = np.concatenate([np.zeros(p, np.float32), mask[eid].astype(np.float32)])[1:]
            np.testing.assert_array_equal(item["loss_weight"][off : off + n - 1].numpy(), want_w)
            assert item["loss_weight"][off + n - 1] == 0
            off += n


def test_overwrite_replaces_a_channel_and_inspect_reports_it(packed_copy):
    ds = PackedDataset(packed_copy)
    first = {k: np.zeros_like(v) for k, v in full_values(ds).items()}
    ds.add_channel("delta", first, dtype="float32", span="full")
    second = full_values(ds, seed=5)
    ds.add_channel("delta", second, dtype="float32", span="full", overwrite=True, info={"note": "v2"})
    ds = PackedDataset(packed_copy)
    check_aligned(ds, "delta", second)
    assert sorted(ds.channels) == ["delta", "loss_mask", "tokens"]
    stats = summary(ds)["channels"]["delta"]
    resp = np.concatenate([second[eid][ds.response_slice(i)] for i, eid in enumerate(ds.ids)])
    assert stats["mean"] == pytest.approx(float(resp.mean()), rel=1e-5)
    assert stats["min"] == pytest.approx(float(resp.min())) and stats["max"] == pytest.approx(float(resp.max()))
    assert stats["positive_fraction"] == pytest.approx(float((resp > 0).mean()))
    assert stats["note"] == "v2"
    assert not [p.name for p in packed_copy.iterdir() if ".tmp" in p.name]


def test_open_refuses_a_channel_whose_layout_differs(packed_copy, demo_packed):
    ds = PackedDataset(packed_copy)
    ds.add_channel("delta", full_values(ds), dtype="float32", span="full")
    # a loss_mask written for a different bin layout is caught on open
    meta = json.loads((packed_copy / "meta.json").read_text())
    meta["channels"]["other"] = {"dtype": "uint8"}
    (packed_copy / "meta.json").write_text(json.dumps(meta))
    for suffix in (".bin", ".idx"):
        (packed_copy / f"other{suffix}").write_bytes((packed_copy / f"loss_mask{suffix}").read_bytes())
    PackedDataset(packed_copy)  # same layout: fine
    idx = bytearray((packed_copy / "other.idx").read_bytes())
    doc_tail = idx[-8:]  # last document index (int64) = number of examples
    idx[-16:-8], idx[-8:] = doc_tail, doc_tail  # merge the last two bins
    (packed_copy / "other.idx").write_bytes(bytes(idx))
    with pytest.raises(T3SError, match=r"channel 'other' is not aligned with tokens \(sequence lengths or bins differ\)"):
        PackedDataset(packed_copy)


# ---- refused add-channel -------------------------------------------------------------------------
def _first(ds):
    return ds.ids[0], int(ds.sequence_lengths[0]), int(ds.sequence_lengths[0] - ds.prompt_lengths[0])


BAD = {
    # name: (change the good full-span float values, add_channel kwargs, message regex)
    "misaligned_length": (
        lambda v, e: v.update({e: v[e][:-1]}), {},
        r"^example id '{eid}': {nm1} values, expected {n} \(every token\) or {r} \(response tokens\)$",
    ),
    "misaligned_full_span": (
        lambda v, e: v.update({e: np.append(v[e], 1.0)}), {"span": "full"},
        r"^example id '{eid}': {np1} values, expected {n} \(full tokens\)$",
    ),
    "unknown_id": (lambda v, e: v.update({"nope": np.zeros(3)}), {}, r"^example id 'nope' is not in .+ \(1 unknown ids\)$"),
    "missing_id": (lambda v, e: v.pop(e), {}, r"^example id '{eid}': no values given"),
    "nan": (lambda v, e: v[e].__setitem__(3, np.nan), {}, r"^example id '{eid}': value nan at position 3 is not finite$"),
    "inf": (lambda v, e: v[e].__setitem__(0, -np.inf), {}, r"^example id '{eid}': value -inf at position 0 is not finite$"),
    "overflows_float32": (
        lambda v, e: v.update({e: v[e].astype(np.float64) * 0 + np.where(np.arange(len(v[e])) == 2, 1e39, 0.0)}), {},
        r"^example id '{eid}': value 1e\+39 at position 2 overflows float32$",
    ),
    "fraction_into_uint8": (
        lambda v, e: v.update({k: np.ones(len(a)) for k, a in v.items()}) or v[e].__setitem__(1, 0.5),
        {"dtype": "uint8"}, r"^example id '{eid}': uint8 channel needs integer values, got fractions",
    ),
    "out_of_range_uint8": (
        lambda v, e: v.update({k: np.ones(len(a), np.int64) for k, a in v.items()}) or v[e].__setitem__(0, 256),
        {"dtype": "uint8"}, r"^example id '{eid}': uint8 channel values must be in 0\.\.255$",
    ),
    "negative_uint8": (
        lambda v, e: v.update({k: np.ones(len(a), np.int64) for k, a in v.items()}) or v[e].__setitem__(0, -1),
        {"dtype": "uint8"}, r"^example id '{eid}': uint8 channel values must be in 0\.\.255$",
    ),
    "strings": (
        lambda v, e: v.update({e: np.array(["a"] * len(v[e]))}), {},
        r"^example id '{eid}': values must be numbers, got dtype <U1$",
    ),
    "two_dimensional": (
        lambda v, e: v.update({e: np.zeros((len(v[e]), 2))}), {},
        r"^example id '{eid}': expected a 1-D array of per-token values, got shape \({n}, 2\)$",
    ),
    "int32_dtype": (lambda v, e: None, {"dtype": "int32"}, r"^channel dtype 'int32': expected float32 or uint8$"),
    "bad_span": (lambda v, e: None, {"span": "prompt"}, r"^span 'prompt': expected auto, full or response$"),
    "bad_fill_uint8": (
        lambda v, e: None, {"dtype": "uint8", "span": "response", "fill": -1},
        r"^--fill -1: a uint8 channel needs an integer in 0\.\.255$",
    ),
    "nan_fill": (lambda v, e: None, {"fill": float("nan")}, r"^--fill nan: a float32 channel needs a finite float32 number$"),
    # 1e40 is a finite float64 but infinite as float32: it would fill every prompt position with inf
    "overflowing_fill": (lambda v, e: None, {"fill": 1e40}, r"^--fill 1e\+40: a float32 channel needs a finite float32 number$"),
    "reserved_name": (lambda v, e: None, {"name": "loss_mask"}, r"^channel name 'loss_mask' is reserved$"),
    "bad_name": (lambda v, e: None, {"name": "Delta-1"}, r"^channel name 'Delta-1': use lowercase letters"),
    "exists": (lambda v, e: None, {"name": "delta"}, r"channel 'delta' exists \(pass --overwrite to replace it\)$"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_refused_add_channel_names_the_problem_and_changes_nothing(packed_copy, case):
    ds = PackedDataset(packed_copy)
    if case == "exists":
        ds.add_channel("delta", full_values(ds), dtype="float32")
    before = snapshot(packed_copy)
    change, kwargs, pattern = BAD[case]
    values = full_values(ds)
    eid, n, r = _first(ds)
    values[eid] = values[eid].copy()
    change(values, eid)
    kwargs = {"name": "extra", "dtype": "float32", **kwargs}
    msg = pattern.format(eid=eid, n=n, r=r, nm1=n - 1, np1=n + 1)
    with pytest.raises(T3SError, match=msg):
        ds.add_channel(kwargs.pop("name"), values, **kwargs)
    assert snapshot(packed_copy) == before
    assert PackedDataset(packed_copy).channels == ds.channels


# ---- channel files -------------------------------------------------------------------------------
def test_load_channel_file_formats_agree(tmp_path):
    values = {"a": np.array([0.5, 1.0, -2.0]), "b": np.array([3.0])}
    for path in (write_npz(tmp_path / "v.npz", values), write_values_jsonl(tmp_path / "v.jsonl", values),
                 write_parquet(tmp_path / "v.parquet", values)):
        got = load_channel_file(path)
        assert sorted(got) == ["a", "b"], path
        for k in values:
            np.testing.assert_array_equal(got[k], values[k])


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("v.jsonl", '{"id": "a", "values": [1]}\n{"id": "a", "values": [2]}\n', r"v\.jsonl:2: duplicate id 'a'$"),
        ("v.jsonl", '{"id": "a"}\n', r"v\.jsonl:1: expected fields 'id' and 'values'$"),
        ("v.jsonl", '{"id": "a", "values": 3}\n', r"v\.jsonl:1: field 'values' must be a list of numbers$"),
        ("v.jsonl", '{"id": "a", "values": [1]}\n{"id": "b", "values": ["x"]}\n',
         r"v\.jsonl:2: field 'values' must be a list of numbers$"),
        ("v.jsonl", '{"id": "a", "values": [1]\n', r"v\.jsonl:1: malformed JSON"),
        ("v.jsonl", "", r"v\.jsonl: no examples \(empty file\)$"),
        ("v.csv", "id,values\n", r"v\.csv: unsupported channel file type '\.csv' \(expected \.npz, \.parquet or \.jsonl\)$"),
        ("v.npz", "not a zip", r"v\.npz: cannot read \.npz"),
        ("v.npz", "", r"v\.npz: cannot read \.npz"),  # numpy raises EOFError, which click took for ^D
        ("v.npz", b"PK\x03\x04cut", r"v\.npz: cannot read \.npz"),  # a truncated zip: BadZipFile
        ("missing.npz", None, r"missing\.npz: channel values file not found$"),
    ],
)
def test_bad_channel_files(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(T3SError, match=message):
        load_channel_file(path)


def test_a_npy_array_named_npz_says_what_an_npz_holds(tmp_path):
    with open(tmp_path / "v.npz", "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(T3SError, match=r"v\.npz: a single \.npy array, not an \.npz archive of one array per example id"):
        load_channel_file(tmp_path / "v.npz")


def test_parquet_needs_id_and_values_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["a"], "delta": [[1.0]]}), tmp_path / "v.parquet")
    with pytest.raises(T3SError, match=r"v\.parquet: missing column 'values' \(expected columns id, values\)$"):
        load_channel_file(tmp_path / "v.parquet")
    pq.write_table(pa.table({"id": ["a", "a"], "values": [[1.0], [2.0]]}), tmp_path / "d.parquet")
    with pytest.raises(T3SError, match=r"d\.parquet: row 2: duplicate id 'a'$"):
        load_channel_file(tmp_path / "d.parquet")
