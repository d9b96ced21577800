"""megatron-core's indexed dataset files (PREFIX.bin + PREFIX.idx), read and written without megatron-core.

Every channel of a packed dataset is one such pair, in exactly the layout that
`megatron.core.datasets.indexed_dataset` writes and reads (tests/unit/test_indexed.py checks both
directions byte for byte), so Megatron-LM and NeMo tools open our channels and we open theirs.

Why not import megatron-core's module: it sits inside the `megatron.core` package, whose import pulls in
torch, DTensor and the inductor (about 9 s of a 2-core CPU's time), and every data command (`t3s data
pack / inspect / add-channel / mix`, `t3s mask`) paid that for a 60-line file format. The training and
profiling processes have megatron-core imported anyway and read through this module too.

.idx layout (little-endian):
    b"MMIDIDX\\x00\\x00"        9-byte magic
    version        u64        1
    dtype code     u8         megatron's DType enum: uint8 1, int8 2, int16 3, int32 4, int64 5,
                              float64 6, float32 7, uint16 8
    sequence count u64        N
    document count u64        D + 1 (document_indices, which starts with 0)
    sequence_lengths  int32[N]
    sequence_pointers int64[N]    byte offset of each sequence in .bin
    document_indices  int64[D+1]  sequence index where each document starts; the last is N
.bin: the sequences' values back to back, C order.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Iterable, Union

import numpy as np

HEADER = b"MMIDIDX\x00\x00"
VERSION = 1
FIELDS = "<QBQQ"  # version, dtype code, sequence count, document count
HEAD = len(HEADER) + struct.calcsize(FIELDS)  # 34 bytes before the arrays
CODES = {np.dtype(np.uint8): 1, np.dtype(np.int8): 2, np.dtype(np.int16): 3, np.dtype(np.int32): 4,
         np.dtype(np.int64): 5, np.dtype(np.float64): 6, np.dtype(np.float32): 7, np.dtype(np.uint16): 8}
DTYPES = {code: dtype for dtype, code in CODES.items()}


def idx_path(prefix: Union[str, Path]) -> str:
    return f"{prefix}.idx"


def bin_path(prefix: Union[str, Path]) -> str:
    return f"{prefix}.bin"


def exists(prefix: Union[str, Path]) -> bool:
    return os.path.exists(idx_path(prefix)) and os.path.exists(bin_path(prefix))


class IndexedReader:
    """Read access to PREFIX.bin/.idx, memory-mapped: reader[i] is sequence i, reader[a:b] a list of them."""

    def __init__(self, prefix: Union[str, Path]):
        path = idx_path(prefix)
        with open(path, "rb") as f:
            head = f.read(HEAD)
        if len(head) < HEAD or head[: len(HEADER)] != HEADER:
            raise ValueError(f"{path}: not a megatron indexed dataset index (bad header)")
        version, code, n, d = struct.unpack(FIELDS, head[len(HEADER) :])
        if version != VERSION or code not in DTYPES:
            raise ValueError(f"{path}: unsupported index (version {version}, dtype code {code})")
        self.dtype = DTYPES[code]
        size = os.path.getsize(path)
        if size < HEAD + 4 * n + 8 * n + 8 * d:
            raise ValueError(f"{path}: index is shorter than its {n} sequences and {d} document entries need")
        index = np.memmap(path, mode="r", dtype=np.uint8)
        self.sequence_lengths = np.frombuffer(index, dtype=np.int32, count=n, offset=HEAD)
        self.sequence_pointers = np.frombuffer(index, dtype=np.int64, count=n, offset=HEAD + 4 * n)
        self.document_indices = np.frombuffer(index, dtype=np.int64, count=d, offset=HEAD + 12 * n)
        data = bin_path(prefix)
        need = int(self.sequence_pointers[-1]) + int(self.sequence_lengths[-1]) * self.dtype.itemsize if n else 0
        have = os.path.getsize(data)
        if have < need:  # a partial copy: caught here, not as numpy's "buffer is smaller" at some later read
            raise ValueError(f"{data}: {have} bytes, but its index needs {need} (an incomplete copy?)")
        # an empty .bin cannot be memory-mapped; it holds only empty sequences
        self._bin = np.memmap(data, mode="r", dtype=np.uint8) if have else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self.sequence_lengths)

    def _read(self, count: int, offset: int) -> np.ndarray:
        return np.frombuffer(self._bin, dtype=self.dtype, count=count, offset=offset)

    def __getitem__(self, i: Union[int, np.integer, slice]):
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1:
                raise ValueError("slices of an indexed dataset must be contiguous")
            if start >= stop:
                return []
            lengths = self.sequence_lengths[start:stop]
            flat = self._read(int(lengths.sum()), int(self.sequence_pointers[start]))
            return np.split(flat, np.cumsum(lengths)[:-1])
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"index must be an int or a slice, not {type(i).__name__}")
        i = int(i) + (len(self) if i < 0 else 0)
        return self._read(int(self.sequence_lengths[i]), int(self.sequence_pointers[i]))


class IndexedWriter:
    """Writes PREFIX.bin while sequences are added and PREFIX.idx at finalize(), as megatron-core's
    IndexedDatasetBuilder does (same bytes). Use it as a context manager or call close() on failure."""

    def __init__(self, prefix: Union[str, Path], dtype):
        self.prefix = str(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODES:
            raise ValueError(f"dtype {self.dtype} has no megatron indexed-dataset code")
        self._bin = open(bin_path(prefix), "wb")
        self.sequence_lengths: list[int] = []
        self.document_indices: list[int] = [0]

    def add_item(self, values) -> None:
        """One sequence; end_document() closes the document it belongs to."""
        a = np.asarray(values, dtype=self.dtype)
        self._bin.write(a.tobytes(order="C"))
        self.sequence_lengths.append(a.size)

    def end_document(self) -> None:
        self.document_indices.append(len(self.sequence_lengths))

    def add_document(self, values, lengths: Iterable[int]) -> None:
        """One document of several sequences given back to back (a packed bin of examples)."""
        a = np.asarray(values, dtype=self.dtype)
        lengths = [int(x) for x in lengths]
        if sum(lengths) != a.size:
            raise ValueError(f"document of {a.size} values given sequence lengths that sum to {sum(lengths)}")
        self._bin.write(a.tobytes(order="C"))
        self.sequence_lengths.extend(lengths)
        self.end_document()

    def finalize(self) -> None:
        self._bin.close()
        lengths = np.asarray(self.sequence_lengths, dtype=np.int32)
        pointers = np.zeros(len(lengths), dtype=np.int64)
        if len(lengths):
            pointers[1:] = np.cumsum(lengths[:-1], dtype=np.int64) * self.dtype.itemsize
        with open(idx_path(self.prefix), "wb") as f:
            f.write(HEADER)
            f.write(struct.pack(FIELDS, VERSION, CODES[self.dtype], len(lengths), len(self.document_indices)))
            f.write(lengths.tobytes(order="C"))
            f.write(pointers.tobytes(order="C"))
            f.write(np.asarray(self.document_indices, dtype=np.int64).tobytes(order="C"))

    def close(self) -> None:
        self._bin.close()

    def __enter__(self) -> "IndexedWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
