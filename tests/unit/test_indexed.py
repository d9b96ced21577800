"""t3s_nemo.data.indexed against megatron-core's own indexed dataset: same bytes, each reads the other's."""

import subprocess
import sys

import numpy as np
import pytest

from t3s_nemo.data import indexed

DTYPES = [np.int32, np.uint8, np.float32, np.uint16, np.int64]


def documents(dtype, seed=0):
    """Three documents of 1-3 sequences each (one empty sequence), values that fit the dtype."""
    rng = np.random.default_rng(seed)
    docs = []
    for n in (3, 1, 2):
        lengths = [int(x) for x in rng.integers(0, 9, size=n)]
        lengths[0] = max(lengths[0], 1)
        docs.append([(rng.random(k) * 200).astype(dtype) for k in lengths])
    docs[1].append(np.zeros(0, dtype))  # an empty sequence
    return docs


def write_ours(prefix, dtype, docs, by_item=False):
    with indexed.IndexedWriter(prefix, dtype) as w:
        for seqs in docs:
            if by_item:
                for s in seqs:
                    w.add_item(s)
                w.end_document()
            else:
                w.add_document(np.concatenate(seqs), [len(s) for s in seqs])
        w.finalize()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_same_bytes_as_megatron_and_read_both_ways(dtype, tmp_path):
    import torch
    from megatron.core.datasets import indexed_dataset as idx

    docs = documents(dtype)
    write_ours(tmp_path / "ours", dtype, docs)
    write_ours(tmp_path / "items", dtype, docs, by_item=True)
    builder = idx.IndexedDatasetBuilder(idx.get_bin_path(str(tmp_path / "theirs")), dtype=dtype)
    for seqs in docs:
        for s in seqs:
            builder.add_item(torch.from_numpy(s.copy()))
        builder.end_document()
    builder.finalize(idx.get_idx_path(str(tmp_path / "theirs")))
    for name in ("ours", "items"):
        for suffix in (".bin", ".idx"):
            assert (tmp_path / f"{name}{suffix}").read_bytes() == (tmp_path / f"theirs{suffix}").read_bytes()

    flat = [s for seqs in docs for s in seqs]
    theirs = idx.IndexedDataset(str(tmp_path / "ours"))  # megatron reads ours
    ours = indexed.IndexedReader(tmp_path / "theirs")  # we read megatron's
    assert len(ours) == len(theirs) == len(flat)
    assert ours.dtype == np.dtype(dtype) == np.dtype(theirs.index.dtype)
    np.testing.assert_array_equal(ours.sequence_lengths, theirs.sequence_lengths)
    np.testing.assert_array_equal(ours.document_indices, theirs.document_indices)
    np.testing.assert_array_equal(ours.document_indices, [0, 3, 5, 7])
    for i, s in enumerate(flat):
        np.testing.assert_array_equal(ours[i], s)
        np.testing.assert_array_equal(theirs[i], s)
        assert ours[i].dtype == np.dtype(dtype)
    for a, b in ((0, 3), (3, 5), (1, 7), (4, 5)):
        got = ours[a:b]
        assert len(got) == b - a
        for x, y in zip(got, theirs[a:b]):
            np.testing.assert_array_equal(x, y)
    assert ours[5:5] == [] and np.array_equal(ours[-1], flat[-1])


def test_reading_needs_no_megatron_core(tmp_path):
    """The data commands open datasets without importing megatron.core (and so torch)."""
    write_ours(tmp_path / "d", np.int32, documents(np.int32))
    code = ("import sys; from t3s_nemo.data import indexed; r = indexed.IndexedReader(sys.argv[1]); r[0]; r[0:2];"
            "print(sorted(m for m in ('megatron.core', 'torch') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "d")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def test_bad_files_are_refused(tmp_path):
    write_ours(tmp_path / "d", np.int32, documents(np.int32))
    idx_file = tmp_path / "d.idx"
    good = idx_file.read_bytes()
    idx_file.write_bytes(b"NOTANIDX" + good[8:])
    with pytest.raises(ValueError, match="bad header"):
        indexed.IndexedReader(tmp_path / "d")
    idx_file.write_bytes(good[:40])
    with pytest.raises(ValueError, match="shorter than its 7 sequences"):
        indexed.IndexedReader(tmp_path / "d")
    idx_file.write_bytes(good)
    bin_file = tmp_path / "d.bin"
    full = bin_file.read_bytes()
    bin_file.write_bytes(full[:-1])  # a copy cut short: refused at open, not at the read that reaches the end
    with pytest.raises(ValueError, match=f"d.bin: {len(full) - 1} bytes, but its index needs {len(full)} "):
        indexed.IndexedReader(tmp_path / "d")
    bin_file.write_bytes(full)
    assert len(indexed.IndexedReader(tmp_path / "d")) == 7
    with pytest.raises(ValueError, match="no megatron indexed-dataset code"):
        indexed.IndexedWriter(tmp_path / "e", np.float16)
    with indexed.IndexedWriter(tmp_path / "f", np.int32) as w:
        with pytest.raises(ValueError, match="sum to 3"):
            w.add_document(np.arange(4), [1, 2])
    assert indexed.exists(tmp_path / "d") and not indexed.exists(tmp_path / "missing")
