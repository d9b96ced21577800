"""The packed dataset: a directory of Megatron indexed datasets sharing one layout, plus meta.json.

    DIR/meta.json           format, seq_length, tokenizer fingerprint, channels, per-example columns
    DIR/tokens.{bin,idx}    int32 token ids
    DIR/loss_mask.{bin,idx} uint8, 1 on response tokens
    DIR/<name>.{bin,idx}    any extra per-token channel (delta: float32, t3s_mask: uint8, ...)
    DIR/tokenizer/          a copy of the tokenizer the tokens were made with

In every channel, sequence i is example i and document b is packed bin b, so all channels share one
index layout (checked on open). Channel values are per *token*: the value of token t applies to the
prediction of token t (at position t-1).
"""

from __future__ import annotations

import functools

import os
import re
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from t3s_nemo.data import indexed
from t3s_nemo.errors import T3SError
from t3s_nemo.io import atomic_write_json, read_json

FORMAT = "t3s-packed"
FORMAT_VERSION = 1
DTYPES = {"int32": np.int32, "uint8": np.uint8, "float32": np.float32}
RESERVED = ("tokens", "loss_mask")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def channel_prefix(path: Path, name: str) -> str:
    return str(path / name)


class PackedDataset:
    """Read access to a packed dataset directory, with layout checks on open."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            hint = ""
            if self.path.is_file() and self.path.suffix in (".jsonl", ".json"):
                hint = ("; this is raw examples: pack them with `t3s data pack`, or give them as data.input "
                        "(with data.tokenizer) and a run packs them into run_dir/data")
            raise T3SError(f"{self.path}: packed dataset directory not found{hint}")
        self.meta = read_json(self.path / "meta.json", "packed dataset meta.json", expect=dict)
        if self.meta.get("format") != FORMAT:
            raise T3SError(f"{self.path}/meta.json: not a t3s packed dataset (format={self.meta.get('format')!r})")
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise T3SError(
                f"{self.path}/meta.json: format_version {self.meta.get('format_version')} is not supported "
                f"(this t3s-nemo reads {FORMAT_VERSION})"
            )
        self._check_meta()
        self._open: dict[str, object] = {}
        tokens = self._dataset("tokens")
        self.sequence_lengths = np.asarray(tokens.sequence_lengths)
        self.document_indices = np.asarray(tokens.document_indices)
        if len(self.sequence_lengths) != self.num_examples:
            raise T3SError(
                f"{self.path}: tokens hold {len(self.sequence_lengths)} sequences but meta.json lists "
                f"{self.num_examples} examples"
            )
        for name in self.channels:
            self._check_aligned(name)
        self._id_index: Optional[dict[str, int]] = None

    def _check_meta(self) -> None:
        """The fields every reader relies on, with the types they are read as: one error naming the field
        (a hand-edited or damaged meta.json otherwise fails later with a KeyError or an IndexError)."""
        where, m = f"{self.path}/meta.json", self.meta

        def need(ok: bool, field: str, expected: str) -> None:
            if not ok:
                raise T3SError(f"{where}: field '{field}' must be {expected}")

        for key, kind in (("seq_length", int), ("examples", dict), ("channels", dict), ("tokenizer", dict)):
            need(isinstance(m.get(key), kind) and not isinstance(m.get(key), bool),
                 key, {int: "an integer", dict: "an object"}[kind])
        tok = m["tokenizer"]
        for key in ("vocab_size", "eos_id", "pad_id"):
            need(isinstance(tok.get(key), int), f"tokenizer.{key}", "an integer")
        need(isinstance(tok.get("fingerprint"), str), "tokenizer.fingerprint", "a string")
        ex = m["examples"]
        need(isinstance(ex.get("id"), list), "examples.id", "a list")
        n = len(ex["id"])
        for key in ("answer", "prompt_length"):
            need(isinstance(ex.get(key), list) and len(ex[key]) == n, f"examples.{key}",
                 f"a list as long as examples.id ({n})")
        need(all(isinstance(x, int) and x >= 0 for x in ex["prompt_length"]), "examples.prompt_length",
             "a list of token counts")
        for name, info in m["channels"].items():
            need(isinstance(info, dict) and info.get("dtype") in DTYPES, f"channels.{name}.dtype",
                 f"one of {', '.join(DTYPES)}")

    # ---- metadata --------------------------------------------------------------------------------
    @property
    def seq_length(self) -> int:
        return int(self.meta["seq_length"])

    @property
    def num_examples(self) -> int:
        return len(self.meta["examples"]["id"])

    @property
    def num_bins(self) -> int:
        return len(self.document_indices) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.sequence_lengths.sum())

    @property
    def channels(self) -> dict[str, dict]:
        return self.meta["channels"]

    @property
    def ids(self) -> list[str]:
        return self.meta["examples"]["id"]

    @property
    def answers(self) -> list[Optional[str]]:
        return self.meta["examples"]["answer"]

    @functools.cached_property
    def prompt_lengths(self) -> np.ndarray:
        # built once: callers index it example by example (rebuilding it per call was quadratic, minutes
        # per pass over 100k examples); treat as read-only
        return np.asarray(self.meta["examples"]["prompt_length"], dtype=np.int64)

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / "tokenizer"

    @property
    def fingerprint(self) -> str:
        return self.meta["tokenizer"]["fingerprint"]

    @property
    def vocab_size(self) -> int:
        return int(self.meta["tokenizer"]["vocab_size"])

    @property
    def pad_id(self) -> int:
        return int(self.meta["tokenizer"]["pad_id"])

    @property
    def eos_id(self) -> int:
        return int(self.meta["tokenizer"]["eos_id"])

    def index_of(self, example_id: str) -> int:
        if self._id_index is None:
            self._id_index = {eid: i for i, eid in enumerate(self.ids)}
        try:
            return self._id_index[example_id]
        except KeyError:
            raise T3SError(f"{self.path}: no example with id '{example_id}'") from None

    # ---- data ------------------------------------------------------------------------------------
    def _dataset(self, name: str):
        if name not in self._open:
            prefix = channel_prefix(self.path, name)
            if not indexed.exists(prefix):
                raise T3SError(f"{self.path}: channel '{name}' is missing ({name}.bin / {name}.idx)")
            try:
                self._open[name] = indexed.IndexedReader(prefix)
            except ValueError as e:
                raise T3SError(f"{self.path}: channel '{name}': {e}") from None
        return self._open[name]

    def _check_aligned(self, name: str) -> None:
        ds = self._dataset(name)
        want = np.dtype(DTYPES[self.channels[name]["dtype"]])
        if ds.dtype != want:
            raise T3SError(f"{self.path}: channel '{name}' has dtype {ds.dtype}, meta.json says {want}")
        if not np.array_equal(ds.sequence_lengths, self.sequence_lengths) or not np.array_equal(
            ds.document_indices, self.document_indices
        ):
            raise T3SError(f"{self.path}: channel '{name}' is not aligned with tokens (sequence lengths or bins differ)")

    def bin_range(self, b: int) -> range:
        return range(int(self.document_indices[b]), int(self.document_indices[b + 1]))

    def read_bin(self, b: int, names: tuple[str, ...] = ("tokens",)) -> dict[str, list[np.ndarray]]:
        """Per-channel list of per-example arrays of packed bin b."""
        r = self.bin_range(b)
        return {name: self._dataset(name)[r.start : r.stop] for name in names}

    def read_example(self, i: int, name: str = "tokens") -> np.ndarray:
        return self._dataset(name)[i]

    def response_slice(self, i: int) -> slice:
        return slice(int(self.prompt_lengths[i]), int(self.sequence_lengths[i]))

    # ---- adding channels -------------------------------------------------------------------------
    def add_channel(
        self,
        name: str,
        values: Mapping[str, np.ndarray],
        dtype: str,
        span: str = "auto",
        fill: float = 0.0,
        overwrite: bool = False,
        info: Optional[dict] = None,
    ) -> dict:
        """Write a per-token channel from per-example arrays keyed by example id.

        span: 'full' (one value per token of the example), 'response' (one per response token; prompt
        tokens get `fill`), or 'auto' (whichever the array length matches).
        """
        if not _NAME.match(name):
            raise T3SError(f"channel name '{name}': use lowercase letters, digits and '_' (start with a letter)")
        if name in RESERVED:
            raise T3SError(f"channel name '{name}' is reserved")
        if dtype not in ("float32", "uint8"):
            raise T3SError(f"channel dtype '{dtype}': expected float32 or uint8")
        if span not in ("auto", "full", "response"):
            raise T3SError(f"span '{span}': expected auto, full or response")
        if name in self.channels and not overwrite:
            raise T3SError(f"{self.path}: channel '{name}' exists (pass --overwrite to replace it)")
        with np.errstate(over="ignore"):
            fits = np.isfinite(np.float32(fill)) if np.isfinite(fill) else False
        if not fits or (dtype == "uint8" and (fill != int(fill) or not 0 <= fill <= 255)):
            need = "an integer in 0..255" if dtype == "uint8" else "a finite float32 number"
            raise T3SError(f"--fill {fill}: a {dtype} channel needs {need}")
        known = set(self.ids)
        unknown = [k for k in values if k not in known]
        if unknown:
            raise T3SError(f"example id '{unknown[0]}' is not in {self.path} ({len(unknown)} unknown ids)")
        np_dtype = DTYPES[dtype]
        arrays: list[np.ndarray] = []
        for i, eid in enumerate(self.ids):
            if eid not in values:
                raise T3SError(f"example id '{eid}': no values given (every example needs its channel values)")
            arrays.append(self._to_channel(eid, i, np.asarray(values[eid]), np_dtype, span, fill))

        prefix = channel_prefix(self.path, name)
        tmp = f"{prefix}.tmp-{os.getpid()}"
        try:
            with indexed.IndexedWriter(tmp, np_dtype) as builder:
                for b in range(self.num_bins):
                    r = self.bin_range(b)
                    parts = arrays[r.start : r.stop]
                    builder.add_document(np.concatenate(parts), [len(p) for p in parts])
                builder.finalize()
            self._open.pop(name, None)
            os.replace(indexed.bin_path(tmp), indexed.bin_path(prefix))
            os.replace(indexed.idx_path(tmp), indexed.idx_path(prefix))
        except BaseException:
            for p in (indexed.bin_path(tmp), indexed.idx_path(tmp)):
                if os.path.exists(p):
                    os.unlink(p)
            raise
        entry = {"dtype": dtype, **(info or {})}
        self.meta["channels"][name] = entry
        atomic_write_json(self.path / "meta.json", self.meta)
        self._check_aligned(name)
        return entry

    def _to_channel(self, eid: str, i: int, arr: np.ndarray, np_dtype, span: str, fill: float) -> np.ndarray:
        full_len = int(self.sequence_lengths[i])
        prompt_len = int(self.prompt_lengths[i])
        resp_len = full_len - prompt_len
        if arr.ndim != 1:
            raise T3SError(f"example id '{eid}': expected a 1-D array of per-token values, got shape {arr.shape}")
        if arr.dtype.kind not in "biuf":
            raise T3SError(f"example id '{eid}': values must be numbers, got dtype {arr.dtype}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            bad = int(np.flatnonzero(~np.isfinite(arr))[0])
            raise T3SError(f"example id '{eid}': value {arr[bad]} at position {bad} is not finite")
        if np_dtype is np.uint8:
            if arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr)):
                raise T3SError(f"example id '{eid}': uint8 channel needs integer values, got fractions (use --dtype float32)")
            if arr.size and (arr.min() < 0 or arr.max() > 255):
                raise T3SError(f"example id '{eid}': uint8 channel values must be in 0..255")
        which = span
        if span == "auto":
            which = "full" if len(arr) == full_len else "response" if len(arr) == resp_len else ""
        expected = full_len if which == "full" else resp_len
        if which == "" or len(arr) != expected:
            raise T3SError(
                f"example id '{eid}': {len(arr)} values, expected {full_len} (every token) or "
                f"{resp_len} (response tokens)" if span == "auto" else
                f"example id '{eid}': {len(arr)} values, expected {expected} ({span} tokens)"
            )
        with np.errstate(over="ignore"):
            cast = arr.astype(np_dtype)
        if np_dtype is np.float32 and not np.isfinite(cast).all():
            bad = int(np.flatnonzero(~np.isfinite(cast))[0])
            raise T3SError(f"example id '{eid}': value {arr[bad]} at position {bad} overflows float32")
        if which == "response":
            out = np.full(full_len, fill, dtype=np_dtype)
            out[prompt_len:] = cast
            return out
        return cast


def load_channel_file(path: str | Path) -> dict[str, np.ndarray]:
    """Per-example arrays keyed by example id from .npz (keys = ids), .parquet or .jsonl (id, values)."""
    path = Path(path)
    if not path.exists():
        raise T3SError(f"{path}: channel values file not found")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            z = np.load(path, allow_pickle=False)
        except Exception as e:  # numpy raises ValueError, OSError, EOFError, BadZipFile, ... by what is wrong
            raise T3SError(f"{path}: cannot read .npz: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise T3SError(f"{path}: a single .npy array, not an .npz archive of one array per example id "
                           "(np.savez(path, **{id: values}))")
        try:
            with z:
                return {k: z[k] for k in z.files}
        except Exception as e:  # a member cut short
            raise T3SError(f"{path}: cannot read .npz: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises ArrowInvalid and friends
            raise T3SError(f"{path}: cannot read parquet: {str(e).splitlines()[0]}") from None
        for col in ("id", "values"):
            if col not in table.column_names:
                raise T3SError(f"{path}: missing column '{col}' (expected columns id, values)")
        ids = table.column("id").to_pylist()
        vals = table.column("values").to_pylist()
        out = {}
        for row, (i, v) in enumerate(zip(ids, vals), start=1):
            if str(i) in out:
                raise T3SError(f"{path}: row {row}: duplicate id '{i}'")
            out[str(i)] = np.asarray(v)
        return out
    if suffix == ".jsonl":
        from t3s_nemo.data.source import iter_raw

        out = {}
        for where, obj in iter_raw(path):
            if "id" not in obj or "values" not in obj:
                raise T3SError(f"{where}: expected fields 'id' and 'values'")
            if not isinstance(obj["values"], list):
                raise T3SError(f"{where}: field 'values' must be a list of numbers")
            if str(obj["id"]) in out:
                raise T3SError(f"{where}: duplicate id '{obj['id']}'")
            try:
                out[str(obj["id"])] = np.asarray(obj["values"], dtype=np.float64)
            except (TypeError, ValueError):
                raise T3SError(f"{where}: field 'values' must be a list of numbers") from None
        return out
    raise T3SError(f"{path}: unsupported channel file type '{suffix}' (expected .npz, .parquet or .jsonl)")
