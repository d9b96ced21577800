"""Snapshots, full checkpoints, resume and retention for one training run.

    run_dir/snapshots/step_<N>/      weights only, one per checkpoint.snapshot_interval steps (+ step 0)
    run_dir/checkpoints/iter_<N>/    model + optimizer + LR schedule + RNG + data position (resume)

Both are megatron dist_checkpointing directories that become visible (t3s.json written by rank 0)
only after every rank finished writing. With checkpoint.async_save the write happens in a background
process while training goes on; the marker is written when megatron's async queue has seen every
rank finish.
"""

from __future__ import annotations

import contextlib
import functools
import re
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from t3s_nemo.checkpoint import weights as W
from t3s_nemo.checkpoint.write_queue import start_write_queue
from t3s_nemo.console import console
from t3s_nemo.errors import T3SError
from t3s_nemo.io import atomic_write_json

# 'fully_reshardable' optimizer state loads at any TP/PP/DP layout (megatron 0.19's default,
# 'fully_sharded_model_space', rejects the flattened ranges its own distributed optimizer produces;
# 'dp_reshardable' loads at the same TP/PP only). See _loadable_without_step for its torch-Adam fix.
OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}
_STEP_DIR = re.compile(r"^(?:step|iter)_(\d+)$")


def step_dirs(parent: Path, complete_only: bool = True) -> list[tuple[int, Path]]:
    """(step, dir) of step_N / iter_N children, sorted by step."""
    if not parent.is_dir():
        return []
    out = []
    for child in parent.iterdir():
        m = _STEP_DIR.match(child.name)
        if m and child.is_dir() and (not complete_only or W.is_complete(child)):
            out.append((int(m.group(1)), child))
    return sorted(out)


def inherited_vocab_rows(run_dir: Path, resume: str, init: str) -> tuple[Optional[int], str, Optional[int]]:
    """(vocabulary rows, where from, rows that hold trained ids) of the weights a run will start from: its
    latest complete full checkpoint (resume=auto), else model.init (a t3s checkpoint, or a Hugging Face
    directory, whose config.json vocab_size `t3s import` pads to 128); (None, "", None) for random init.
    See t3s_nemo.training.setup.vocab_rows."""
    from t3s_nemo.config import resolve_path
    from t3s_nemo.io import read_json
    from t3s_nemo.model.qwen3 import padded_vocab_size

    if resume == "auto":
        done = step_dirs(Path(run_dir) / "checkpoints")
        if done:
            rows = W.read_marker(done[-1][1]).get("padded_vocab_size")
            return rows, str(done[-1][1]), rows
    if not init:
        return None, "", None
    path = Path(resolve_path(init))
    if (path / W.MARKER).is_file():
        rows = W.read_marker(path).get("padded_vocab_size")
        return rows, f"model.init {path}", rows
    if (path / "config.json").is_file():
        vocab = read_json(path / "config.json", "Hugging Face config.json").get("vocab_size")
        if isinstance(vocab, int) and vocab > 0:
            return padded_vocab_size(vocab, 1), f"model.init {path}", vocab  # padded as `t3s import` does
    return None, "", None  # load_init says what is wrong with it


def snapshot_bytes(num_params: int, dtype: torch.dtype) -> int:
    return num_params * (2 if dtype in (torch.bfloat16, torch.float16) else 4)


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000:
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


class CheckpointManager:
    def __init__(self, run_dir: Path, ccfg, bundle, packed, cfg):
        self.run_dir = Path(run_dir)
        self.ccfg = ccfg
        self.bundle = bundle
        self.cfg = cfg
        self.tokenizer_fingerprint = packed.fingerprint
        self.snapshots = self.run_dir / "snapshots"
        self.checkpoints = self.run_dir / "checkpoints"
        self.is_main = not dist.is_initialized() or dist.get_rank() == 0
        self._queue = None
        self._last_full = -1
        self._last_snapshot = -1
        start_write_queue(ccfg.async_save)
        if ccfg.async_save:
            from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

            self._queue = AsyncCallsQueue()

    # ---- markers ------------------------------------------------------------------------------------
    def _marker(self, kind: str, step: int) -> dict:
        from t3s_nemo import __version__

        return {
            "kind": kind,
            "step": step,
            "preset": self.cfg.model.preset,
            "shape": {k: getattr(self.bundle.shape, k) for k in self.bundle.shape.__dataclass_fields__},
            "padded_vocab_size": self.bundle.vocab_size,
            "tokenizer_fingerprint": self.tokenizer_fingerprint,
            "tokenizer": str((Path(self.cfg.data.path) / "tokenizer").resolve()),  # absolute: the run may be read from another directory
            "dtype": str(self.bundle.dtype).replace("torch.", ""),
            "saved_layout": _layout(),
            "objective": self.cfg.model.objective,
            "mask_token_id": self.cfg.model.mask_token_id,  # dllm: the id the sampler must use
            "t3s_nemo": __version__,
        }

    # ---- saving ---------------------------------------------------------------------------------------
    def _save(self, sharded: dict, path: Path, marker: dict, after=None) -> None:
        from megatron.core import dist_checkpointing

        W.prepare_dir(path)
        if self._queue is None:
            dist_checkpointing.save(sharded, str(path))
            W.finish(path, marker)
            if after and self.is_main:
                after()
            return
        request = dist_checkpointing.save(sharded, str(path), async_sharded_save=True,
                                          async_strategy=_async_strategy())

        def finalize():
            # runs on every rank once all ranks' writes are done (the queue checks that collectively)
            if self.is_main:
                atomic_write_json(path / W.MARKER, marker)
                if after:
                    after()

        request.add_finalize_fn(finalize)
        self._queue.schedule_async_request(request)

    def snapshot(self, model_chunks, step: int) -> None:
        self._last_snapshot = step  # first: a synchronous save's retention must keep it as the newest
        self._save(W.model_sharded_state_dict(model_chunks), self.snapshots / f"step_{step}",
                   self._marker(W.KIND_WEIGHTS, step), after=functools.partial(self._retain_snapshots, step))

    def save_full(self, model, optimizer, scheduler, step: int) -> None:
        from t3s_nemo.training.setup import unwrap

        if step == self._last_full:  # saved at this step already (a preemption right after a periodic save):
            return  # writing it again would first delete the complete one
        self._last_full = step
        chunks = unwrap(model)
        sharded = W.model_sharded_state_dict(chunks)
        sharded["optimizer"] = optimizer.sharded_state_dict(sharded, metadata=OPTIMIZER_METADATA)
        sharded["scheduler"] = scheduler.state_dict()
        sharded["rng"] = _rng_sharded()
        sharded["step"] = step
        sharded["adam_step"] = _adam_step(optimizer)
        self._save(sharded, self.checkpoints / f"iter_{step}", self._marker(W.KIND_FULL, step),
                   after=functools.partial(self._retain_full, step))

    def poll(self, blocking: bool = False) -> None:
        if self._queue is not None:
            self._queue.maybe_finalize_async_calls(blocking=blocking)

    # ---- hooks for the loop -------------------------------------------------------------------------
    def at_start(self, model, start: int) -> None:
        from t3s_nemo.model.qwen3 import num_parameters
        from t3s_nemo.training.setup import unwrap

        c = self.ccfg
        if c.snapshot_interval and self.is_main:
            written, kept = snapshot_plan(c, self.cfg.train.steps)
            per = snapshot_bytes(num_parameters(self.bundle.shape, self.bundle.vocab_size), self.bundle.dtype)
            also = "" if len(kept) == len(written) else f", {len(kept)} kept"
            console.print(f"snapshots: {len(written)} of {_human(per)} each{also} -> up to {_human(per * len(kept))} "
                          f"in {self.snapshots}")
        if c.snapshot_interval and c.snapshot_step0 and start == 0 and not W.is_complete(self.snapshots / "step_0"):
            self.snapshot(unwrap(model), 0)

    def after_step(self, model, optimizer, scheduler, step: int) -> None:
        from t3s_nemo.training.setup import unwrap

        self.poll()
        c = self.ccfg
        if c.snapshot_interval and step % c.snapshot_interval == 0:
            self.snapshot(unwrap(model), step)
        if c.save_interval and step % c.save_interval == 0 and step < self.cfg.train.steps:
            self.save_full(model, optimizer, scheduler, step)

    def at_end(self, model, optimizer, scheduler, step: int) -> None:
        from t3s_nemo.training.setup import unwrap

        if self.ccfg.snapshot_interval and self._last_snapshot != step:
            self.snapshot(unwrap(model), step)
        if self._last_full != step:
            self.save_full(model, optimizer, scheduler, step)
        self.close()

    def close(self) -> None:
        if self._queue is not None:
            self._queue.maybe_finalize_async_calls(blocking=True)
            self._queue.close()
            self._queue = None

    # ---- loading ------------------------------------------------------------------------------------
    def restore(self, model, optimizer, scheduler) -> int:
        """Load the latest complete full checkpoint; returns the step to continue from (0 if none)."""
        from megatron.core import dist_checkpointing

        from t3s_nemo.training.distributed import rank0_says
        from t3s_nemo.training.setup import unwrap

        incomplete = [p for _, p in step_dirs(self.checkpoints, complete_only=False) if not W.is_complete(p)]
        if incomplete and self.is_main:
            console.print(f"[yellow]ignoring interrupted checkpoint save(s):[/] {', '.join(p.name for p in incomplete)}")
        latest = rank0_says(lambda: step_dirs(self.checkpoints)[-1:])  # every rank loads the same one
        if not latest:
            return 0
        step, path = latest[0]
        marker = W.read_marker(path)
        self._check_compatible(marker, path)
        chunks = unwrap(model)
        _prime_adam_state(optimizer)
        sharded = W.model_sharded_state_dict(chunks)
        sharded["optimizer"] = optimizer.sharded_state_dict(sharded, is_loading=True, metadata=OPTIMIZER_METADATA)
        sharded["scheduler"] = None
        same_layout = marker.get("saved_layout") == _layout()
        if same_layout:  # RNG states are per rank; at another layout they start fresh from train.seed
            sharded["rng"] = _rng_sharded()
        sharded["step"] = None
        sharded["adam_step"] = None
        try:
            loaded = dist_checkpointing.load(sharded, str(path))
        except torch.cuda.OutOfMemoryError:
            raise  # the layout's memory, not the checkpoint
        except (FileNotFoundError, EOFError, KeyError, ValueError, RuntimeError) as e:
            # what torch.distributed.checkpoint raises for missing or cut shards; the cause stays chained
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise T3SError(f"{path}: cannot load this checkpoint ({type(e).__name__}: {first[:300]}); a damaged "
                           f"checkpoint can be moved out of {self.checkpoints} to resume from the one before") from e
        keys = ["model"] if len(chunks) == 1 else [f"model{i}" for i in range(len(chunks))]
        for chunk, key in zip(chunks, keys):
            chunk.load_state_dict(loaded[key])
        with torch.no_grad(), _loadable_without_step(optimizer):  # fp32: main params are views of the leaves
            optimizer.load_state_dict(loaded["optimizer"])
        _set_adam_steps(optimizer, loaded["adam_step"])
        scheduler.load_state_dict(loaded["scheduler"])
        if same_layout:
            _set_rng(loaded["rng"])
        self._last_full = step
        self._last_snapshot = max([s for s, _ in step_dirs(self.snapshots)], default=-1)
        if self.is_main:
            console.print(f"resumed from {path} (step {step})")
        return int(loaded["step"])

    def load_init(self, init: str) -> None:
        """Starting weights from model.init: a t3s checkpoint/snapshot or a Hugging Face directory."""
        from t3s_nemo.config import resolve_path

        path = Path(resolve_path(init))  # pkg:assets/demo/student is the demo's bundled student
        if (path / W.MARKER).is_file():
            marker = W.read_marker(path)
            self._check_compatible(marker, path)
            W.load_weights(self.bundle.chunks, path, expect_vocab=self.bundle.vocab_size)
        elif (path / "config.json").is_file():
            converted = self._import_hf(path)
            W.load_weights(self.bundle.chunks, converted, expect_vocab=self.bundle.vocab_size)
        elif path.is_dir() and any(path.glob("*.distcp")) or (path / "metadata.json").is_file():
            raise T3SError(f"{path}: checkpoint has no {W.MARKER} (its save did not complete)")
        else:
            raise T3SError(f"config key 'model.init': {path} is neither a t3s checkpoint nor a Hugging Face model directory")
        if self.is_main:
            console.print(f"initialised from {path}")

    def _import_hf(self, hf_dir: Path) -> Path:
        """Rank 0 converts the HF directory once (run_dir/init_from_hf); every rank then loads its shard."""
        import os
        import subprocess
        import sys

        from t3s_nemo.training.distributed import long_barrier

        converted = self.run_dir / "init_from_hf"
        if self.is_main and needs_conversion(converted, hf_dir):
            console.print(f"converting {hf_dir} to {converted} (once per run directory)")
            # a clean single-process CPU environment: not a member of this run's process group (torchrun's
            # TORCHELASTIC_USE_AGENT_STORE would make the child wait on the agent's rendezvous store)
            env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHELASTIC_") and k not in (
                "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK", "ROLE_WORLD_SIZE", "SLURM_PROCID",
                "SLURM_NTASKS", "SLURM_LOCALID")}
            env["CUDA_VISIBLE_DEVICES"] = ""
            p = subprocess.run([sys.executable, "-m", "t3s_nemo.model.hf", "import", str(hf_dir), str(converted),
                                "--overwrite"], env=env, capture_output=True, text=True)
            if p.returncode != 0:
                lines = (p.stderr or p.stdout).strip().splitlines()
                raise T3SError(f"model.init={hf_dir}: import failed: {lines[-1] if lines else p.returncode}")
        long_barrier()  # converting a 32B model can outlast the default group's timeout
        marker = W.read_marker(converted)
        self._check_compatible(marker, hf_dir)
        return converted

    def _check_compatible(self, marker: dict, path: Path) -> None:
        fp = marker.get("tokenizer_fingerprint")
        if fp and fp != self.tokenizer_fingerprint:
            raise T3SError(f"{path}: made with another tokenizer ({fp}) than the dataset's ({self.tokenizer_fingerprint})")
        from t3s_nemo.model.qwen3 import FUNCTION_FIELDS, LOAD_FIELDS, Shape

        shape = marker.get("shape")
        mine = {k: getattr(self.bundle.shape, k) for k in self.bundle.shape.__dataclass_fields__}
        if shape:
            # markers written before the MoE fields existed are dense: the Shape defaults
            theirs = {k: shape.get(k, Shape.__dataclass_fields__[k].default) for k in LOAD_FIELDS}
            diff = [k for k in LOAD_FIELDS if theirs[k] != mine[k]]
            if diff:
                raise T3SError(f"{path}: model shape differs from model.preset={self.cfg.model.preset} "
                               f"({', '.join(f'{k} {theirs[k]} vs {mine[k]}' for k in diff)})")
            # the weights load, but the function differs: on purpose (a longer context's rope_theta) or not
            # (a fine-tune's norm_eps the preset does not know): say so, with the key that keeps the weights'
            other = [k for k in FUNCTION_FIELDS if k in shape and shape[k] != mine[k]]
            if other and self.is_main:
                console.print(f"[yellow]note:[/] {path} was made with "
                              + ", ".join(f"{k} {shape[k]}" for k in other) + "; this run uses "
                              + ", ".join(f"{mine[k]}" for k in other) + " (model.preset="
                              f"{self.cfg.model.preset}); to keep the weights' own, set "
                              + " ".join(f"model.{k}={shape[k]}" for k in other))

    # ---- retention ----------------------------------------------------------------------------------
    # `saved`: the step whose save just completed. Saves complete in order, so any save still being
    # written is of a later step; an unmarked directory of an earlier one is an interrupted save
    def _retain_full(self, saved: int) -> None:
        done = step_dirs(self.checkpoints)
        for _, path in done[: max(0, len(done) - self.ccfg.keep_last)]:
            W.remove_checkpoint(path)
        _remove_interrupted(self.checkpoints, saved)

    def _retain_snapshots(self, saved: int) -> None:
        for step, path in step_dirs(self.snapshots):
            # the newest is kept until a newer one exists
            if step != self._last_snapshot and not keeps_snapshot(self.ccfg, step):
                W.remove_checkpoint(path)
        _remove_interrupted(self.snapshots, saved)


def needs_conversion(converted: Path, hf_dir: Path) -> bool:
    """Whether run_dir/init_from_hf must be (re)made from hf_dir: missing, interrupted, or made from another
    model.init (a first launch that died before its first checkpoint, relaunched with another one)."""
    if not W.is_complete(converted):
        return True
    made_from = W.read_marker(converted).get("source")
    return not made_from or Path(made_from).resolve() != Path(hf_dir).resolve()


def keeps_snapshot(c, step: int) -> bool:
    """Whether retention keeps snapshot `step` (besides the newest, always kept): step 0, every
    snapshot_keep_every-th on the snapshot grid, within snapshot_window."""
    if step == 0:
        return True
    if step % (c.snapshot_interval * c.snapshot_keep_every):
        return False
    return c.snapshot_window is None or c.snapshot_window[0] <= step <= c.snapshot_window[1]


def snapshot_plan(c, steps: int) -> tuple[list[int], list[int]]:
    """(steps a run of `steps` steps snapshots, those retention keeps at its end), for the disk estimate."""
    written = list(range(0 if c.snapshot_step0 else c.snapshot_interval, steps + 1, c.snapshot_interval))
    if steps not in written:
        written.append(steps)  # at_end snapshots the last step, on the grid or not
    return written, [s for s in written if s == steps or keeps_snapshot(c, s)]


def _remove_interrupted(parent: Path, saved: int) -> None:
    """Interrupted saves (no marker) of steps before `saved`, the save that just completed: none is still
    being written (saves complete in order; a previous launch's later steps may still be on disk, so
    the newest on disk is no bound), and each may be as large as a full checkpoint."""
    for step, path in step_dirs(parent, complete_only=False):
        if step < saved and not W.is_complete(path):
            W.remove_checkpoint(path)


def _prime_adam_state(optimizer) -> None:
    """Give a fresh torch Adam a zero state before loading one into it.

    Without Transformer Engine or apex, megatron's DistributedOptimizer.state_dict() reads the Adam
    `step` from per-parameter state, which a never-stepped optimizer does not have (it asserts); the
    loaded checkpoint then overwrites these zeros.
    """
    for inner in _torch_optimizers(optimizer):
        for group in inner.param_groups:
            for p in group["params"]:
                if not inner.state[p]:
                    inner.state[p] = {"step": torch.zeros((), dtype=torch.float32),
                                      "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}


@contextlib.contextmanager
def _loadable_without_step(optimizer):
    """Let megatron 0.19 load 'fully_reshardable' state into torch's Adam (no Transformer Engine / apex).

    Its loader drops Adam's per-parameter `step` from what it read, then copies every tensor of the
    parameter's current state from that dict and fails on the missing 'step' (KeyError). While loading,
    each DistributedOptimizer instance here is given a wrapper that passes the current step back in (a
    copy onto itself); _set_adam_steps then restores the saved step. Instance attributes only: the class
    and other optimizers are untouched, and the wrappers are removed afterwards.
    """
    wrapped = []
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        original = getattr(opt, "_set_main_param_and_optimizer_states", None)
        if original is None or not isinstance(getattr(opt, "optimizer", None), torch.optim.Optimizer):
            continue

        def with_step(model_param, tensors, _opt=opt, _original=original):
            group, order = _opt.model_param_group_index_map[model_param]
            state = _opt.optimizer.state[_opt.optimizer.param_groups[group]["params"][order]]
            if isinstance(state.get("step"), torch.Tensor) and "step" not in tensors:
                tensors = dict(tensors, step=state["step"])
            return _original(model_param, tensors)

        opt._set_main_param_and_optimizer_states = with_step
        wrapped.append(opt)
    try:
        yield
    finally:
        for opt in wrapped:
            del opt._set_main_param_and_optimizer_states


def _torch_optimizers(optimizer):
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if isinstance(inner, torch.optim.Optimizer):
            yield inner


def _adam_step(optimizer) -> float:
    for inner in _torch_optimizers(optimizer):
        for state in inner.state.values():
            if isinstance(state.get("step"), torch.Tensor):
                return float(state["step"])
    return 0.0


def _set_adam_steps(optimizer, step: float) -> None:
    """Restore torch Adam's per-parameter `step` (bias correction) after a load.

    Without TE/apex, megatron's DistributedOptimizer round trip loses it (the loaded value is the
    placeholder's) and puts one shared tensor into every parameter's state, which torch's Adam would
    then increment once per parameter. We save the step ourselves and give each parameter its own.
    """
    for inner in _torch_optimizers(optimizer):
        for state in inner.state.values():
            if "step" in state:
                state["step"] = torch.tensor(float(step), dtype=torch.float32)


def _layout() -> dict:
    from megatron.core import parallel_state as ps

    return {
        "tp": ps.get_tensor_model_parallel_world_size(),
        "pp": ps.get_pipeline_model_parallel_world_size(),
        "vpp": ps.get_virtual_pipeline_model_parallel_world_size(),
        "cp": ps.get_context_parallel_world_size(),
        "dp": ps.get_data_parallel_world_size(),
    }


def _async_strategy() -> str:
    try:
        import nvidia_resiliency_ext  # noqa: F401

        return "nvrx"
    except ImportError:
        return "mcore"  # megatron-core's own async writer (deprecated upstream in favour of NVRx)


def _rng_sharded():
    """RNG states of this rank as a sharded object (each rank restores its own)."""
    import numpy as np
    import random

    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.mapping import ShardedObject
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    state = {
        "random": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": get_cuda_rng_tracker().get_states(),
    }
    pp, tp = ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank()
    dp = ps.get_data_parallel_rank(with_context_parallel=True)
    return ShardedObject(
        "rng_state", state,
        (ps.get_pipeline_model_parallel_world_size(), ps.get_tensor_model_parallel_world_size(),
         ps.get_data_parallel_world_size(with_context_parallel=True)),
        (pp, tp, dp), replica_id=0,
    )


def _set_rng(state: Optional[dict]) -> None:
    import numpy as np
    import random

    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    if not state:
        return
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    get_cuda_rng_tracker().set_states(state["tracker"])
