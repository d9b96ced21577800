"""Weights-only checkpoints (snapshots, model.init) in megatron-core's distributed checkpoint format.

A checkpoint directory is a dist_checkpointing directory plus `t3s.json`, written by rank 0 *after*
every rank finished writing (a barrier separates them): a directory without t3s.json is an
interrupted save and is never loaded. Parameters are stored under megatron's global keys, so a
checkpoint saved at one TP/PP layout loads at any other (dist_checkpointing reshards on load).
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from t3s_nemo.errors import T3SError
from t3s_nemo.io import atomic_write_json, read_json

MARKER = "t3s.json"
KIND_WEIGHTS = "weights"
KIND_FULL = "full"


def is_complete(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def read_marker(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_dir():
        raise T3SError(f"{path}: checkpoint directory not found")
    if not is_complete(path):
        if any((path / n).exists() for n in (".metadata", "metadata.json", "common.pt")) or any(path.glob("*.distcp")):
            raise T3SError(f"{path}: incomplete checkpoint (no {MARKER}; its save was interrupted)")
        hint = ""
        if (path / "snapshots").is_dir() or (path / "checkpoints").is_dir():
            hint = "; this looks like a run directory: pass RUN/snapshots/step_N or RUN/checkpoints/iter_N"
        elif path.name in ("snapshots", "checkpoints"):
            hint = f"; pass one of its step directories ({path}/...)"
        raise T3SError(f"{path}: not a t3s checkpoint (no {MARKER}){hint}")
    marker = read_json(path / MARKER, "checkpoint marker", expect=dict)
    if "shape" in marker and not isinstance(marker["shape"], dict):
        raise T3SError(f"{path / MARKER}: field 'shape' must be an object, got {type(marker['shape']).__name__}")
    return marker


def model_sharded_state_dict(chunks) -> dict:
    # chunk-prefixed dict keys keep local names apart; the ShardedTensor keys inside are global
    if len(chunks) == 1:
        return {"model": chunks[0].sharded_state_dict()}
    return {f"model{i}": c.sharded_state_dict() for i, c in enumerate(chunks)}


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint directory, marker first: killed halfway, it is an interrupted save, never a
    "complete" one missing its data."""
    with contextlib.suppress(FileNotFoundError):
        (path / MARKER).unlink()
    shutil.rmtree(path, ignore_errors=True)


def prepare_dir(path: Path) -> None:
    """Empty directory for a save; a leftover of the same step (interrupted, or a previous launch's
    complete one past the step a resume restarted from) is removed."""
    if _is_main():
        if path.is_dir():
            remove_checkpoint(path)
        elif path.exists() or path.is_symlink():  # a stray file by the name the save needs
            path.unlink()
        path.mkdir(parents=True)
    _barrier()


def finish(path: Path, marker: dict) -> None:
    _barrier()  # every rank has written its shards
    if _is_main():
        atomic_write_json(path / MARKER, marker)
    _barrier()


def save_weights(chunks, path: str | Path, marker: dict) -> None:
    """Synchronous weights-only save (all ranks call it)."""
    from megatron.core import dist_checkpointing

    from t3s_nemo.checkpoint.write_queue import start_write_queue

    start_write_queue(async_save=False)  # megatron's default would spawn a Manager process for the results
    path = Path(path)
    prepare_dir(path)
    dist_checkpointing.save(model_sharded_state_dict(chunks), str(path))
    finish(path, dict(marker, kind=marker.get("kind", KIND_WEIGHTS)))


def load_weights(chunks, path: str | Path, expect_vocab: Optional[int] = None) -> dict:
    """Load model weights from a t3s checkpoint into this rank's chunks (any saved layout)."""
    from megatron.core import dist_checkpointing

    path = Path(path)
    marker = read_marker(path)
    if expect_vocab is not None and marker.get("padded_vocab_size") not in (None, expect_vocab):
        raise T3SError(
            f"{path}: checkpoint vocabulary ({marker.get('padded_vocab_size')}) differs from this run's "
            f"({expect_vocab}); was it trained with another tokenizer?"
        )
    sharded = model_sharded_state_dict(chunks)
    try:
        loaded = dist_checkpointing.load(sharded, str(path))
    except Exception as e:  # a user pointing at the wrong model gets a message, not a traceback
        raise T3SError(f"{path}: cannot load model weights into this model ({type(e).__name__}: "
                       f"{str(e).splitlines()[0][:300]})") from None
    keys = ["model"] if len(chunks) == 1 else [f"model{i}" for i in range(len(chunks))]
    with torch.no_grad():
        for chunk, key in zip(chunks, keys):
            chunk.load_state_dict(loaded[key], strict=False)
    return marker
