"""SFT / masked T3S training of a Qwen3 student on megatron-core. Runs on every rank.

    torchrun --nproc-per-node N -m t3s_nemo.recipes.train [--mode sft|train] CONFIG [key=value ...]
    srun python -m t3s_nemo.recipes.train ...            (Slurm: one task per GPU)

`t3s sft` / `t3s train` launch this. Reads top to bottom: set-up, the loop, the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist

from t3s_nemo.config import Config, check_parallel, check_run_dir, load_config, save_config, to_yaml
from t3s_nemo.console import console, exit_on_user_error, progress
from t3s_nemo.errors import T3SError


def parse_args(argv: list[str]) -> tuple[str, Config]:
    p = argparse.ArgumentParser(prog="t3s_nemo.recipes.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("sft", "train"), default="sft")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)
    cfg = load_config(a.config, a.overrides)
    if not cfg.run_dir:
        raise T3SError("config key 'run_dir' is required (where checkpoints and logs go)")
    if not cfg.data.path and not cfg.data.input:
        raise T3SError("config key 'data.path' is required (a packed dataset from `t3s data pack`), "
                       "or data.input + data.tokenizer to pack one into run_dir/data")
    if a.mode == "train" and not (cfg.mask.channel or cfg.mask.rule):
        raise T3SError("`t3s train` trains with a T3S mask: set mask.channel (e.g. t3s_mask) or mask.rule "
                       "(ar | reverse); use `t3s sft` for plain SFT")
    check_run_dir(cfg)
    return a.mode, cfg


def ensure_packed(cfg: Config, is_main: bool) -> str:
    """data.path, or run_dir/data packed from data.input by rank 0 on first use."""
    from t3s_nemo.config import resolve_path
    from t3s_nemo.data.pack import PackOptions, pack
    from t3s_nemo.data.source import Fields
    from t3s_nemo.training.distributed import long_barrier

    # the run's config.yaml records the dataset by its absolute path: the later stages (profile, mask,
    # bottleneck) read it from there and may run from another working directory
    if cfg.data.path:
        cfg.data.path = os.path.abspath(resolve_path(cfg.data.path))
        return cfg.data.path
    out = Path(cfg.run_dir).absolute() / "data"
    if is_main and not (out / "meta.json").is_file():
        if not cfg.data.tokenizer:
            raise T3SError("config key 'data.tokenizer' is required to pack data.input")
        d = cfg.data
        fields = Fields(prompt=d.prompt_field, response=d.response_field, answer=d.answer_field,
                        messages=d.messages_field, id=d.id_field, options="config")
        made = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
        try:
            s = pack([resolve_path(d.input)], resolve_path(d.tokenizer), out,
                     PackOptions(seq_length=d.seq_length, on_overflow=d.on_overflow, template=d.template,
                                 fields=fields, system_prompt=d.system_prompt, overwrite=True))
        except T3SError:  # bad input: leave no empty run directory behind (a rerun would take it for a run)
            for p in made:
                if p.is_dir() and not any(p.iterdir()):
                    p.rmdir()
            raise
        console.print(s.lines()[0] + f" -> {out}")
    long_barrier()  # rank 0 may pack for longer than the default group's timeout
    cfg.data.path = str(out)
    return str(out)


PREEMPTED_EXIT = 75  # EX_TEMPFAIL: the Slurm scripts requeue the job on this code


class Preemption:
    """SIGUSR1/SIGTERM (Slurm's --signal, scancel, preemption) ask for a checkpoint and a clean exit."""

    def __init__(self):
        import signal

        self.requested = False
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGUSR1, signal.SIGTERM)}

    def close(self) -> None:
        """Give the signals back: `t3s pipeline` runs this recipe in its own process and must stay killable."""
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        self.requested = True

    def agreed(self) -> bool:
        """True on every rank once any rank was signalled (ranks may see the signal at different steps)."""
        from t3s_nemo.training.distributed import collective_device

        flag = torch.tensor([1.0 if self.requested else 0.0], device=collective_device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def main(argv: list[str] | None = None) -> None:
    from t3s_nemo.training.distributed import one_kernel_queue_for_overlap

    mode, cfg = parse_args(sys.argv[1:] if argv is None else argv)
    one_kernel_queue_for_overlap(cfg.parallel)  # before megatron-core (and Transformer Engine) import

    from megatron.core import parallel_state as ps
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from t3s_nemo.checkpoint import manager
    from t3s_nemo.data.packed import PackedDataset
    from t3s_nemo.model.qwen3 import num_parameters, step_flops
    from t3s_nemo.training import data as tdata
    from t3s_nemo.training.context_parallel import split_for_context_parallel
    from t3s_nemo.training.distributed import (collective_device, init_distributed, init_model_parallel, rank0_says,
                                               shutdown)
    from t3s_nemo.training.logging import TrajectoryLog, peak_flops, print_line
    from t3s_nemo.training.loss import schedule_shape, t3s_forward_step
    from t3s_nemo.training.setup import build_model, build_optimizer, build_scheduler, vocab_rows, wrap_ddp

    # ---- set-up -------------------------------------------------------------------------------------
    env = init_distributed()
    dp = check_parallel(cfg, env.world_size)
    init_model_parallel(cfg.parallel)
    run_dir = Path(cfg.run_dir)
    packed = PackedDataset(ensure_packed(cfg, env.is_main))
    dllm = cfg.model.objective == "dllm"
    vocab = packed.vocab_size
    if dllm:  # masked diffusion (t3s_nemo/dllm/training.py): unshifted data, a mask token, bidirectional
        from t3s_nemo.dllm import training as dtrain

        bins = dtrain.open_dllm_data(cfg, packed)
        cfg.model.mask_token_id = dtrain.choose_mask_token(packed, cfg.model.mask_token_id)
        vocab = dtrain.model_vocab_size(packed, cfg.model.mask_token_id)
        forward_step = partial(dtrain.dllm_forward_step, mask_token_id=cfg.model.mask_token_id,
                               eps=cfg.model.noise_eps)
    else:
        bins = tdata.open_training_data(cfg, packed)
        forward_step = t3s_forward_step
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    inherited = rank0_says(lambda: manager.inherited_vocab_rows(run_dir, cfg.resume, cfg.model.init))
    rows = vocab_rows(vocab, cfg.parallel.tp, *inherited)
    bundle = build_model(cfg, rows, packed.seq_length, bidirectional=dllm)
    forward_step = partial(forward_step, thd=bundle.packed_thd)  # not re-detected per micro-batch
    ckpt = manager.CheckpointManager(run_dir, cfg.checkpoint, bundle, packed, cfg)
    model = wrap_ddp(bundle, cfg)
    optimizer = build_optimizer(model, cfg, bundle.dtype)
    scheduler = build_scheduler(optimizer, cfg)
    bundle.tconfig.finalize_model_grads_func = finalize_model_grads
    moe = bundle.shape.is_moe
    if moe:  # the load-balancing aux loss (t3s_nemo/training/moe.py): its scale per step, and its log
        from t3s_nemo.training import moe as tmoe

        aux_scale = tmoe.AuxLossScale()
        bundle.tconfig.moe_grad_scale_func = aux_scale
        n_moe_layers = sum(bundle.shape.is_moe_layer(i) for i in range(bundle.shape.num_layers))
    # from here a signal asks for a checkpoint: loading a 32B checkpoint or the final save take minutes,
    # and the default handlers would end the job by the signal, which the Slurm scripts do not requeue
    preemption = Preemption()
    start = ckpt.restore(model, optimizer, scheduler) if cfg.resume == "auto" else 0
    if start == 0 and cfg.model.init:
        ckpt.load_init(cfg.model.init)
    elif start == 0 and env.is_main and cfg.model.preset not in ("tiny", "tiny_moe"):
        console.print(f"[yellow]model.init is empty: {cfg.model.preset} starts from random weights[/] (set "
                      "model.init to a Hugging Face directory or a t3s checkpoint to fine-tune one)")
    # train.stop_at ends this launch early (a chunk of online T3S); the schedule still spans train.steps
    end = min(cfg.train.steps, cfg.train.stop_at or cfg.train.steps)
    if start >= end:
        if env.is_main:
            console.print(f"{run_dir}: already trained {start}/{end} steps; nothing to do")
        preemption.close()
        ckpt.close()
        shutdown()
        return
    if env.is_main:  # after the checks above: a refused or finished run keeps the config it was made with
        # what the run trains at: the packed dataset's bins (data.seq_length only packs data.input)
        cfg.data.seq_length = packed.seq_length
        save_config(cfg, run_dir / "config.yaml")

    sampler = tdata.StepSampler(len(bins), cfg.train.global_batch_size, cfg.train.seed, cfg.data.shuffle)
    forward_backward = get_forward_backward_func()
    dp_rank = ps.get_data_parallel_rank()
    # the last stage's TP rank 0 of every data-parallel replica and CP rank contributes the step's
    # statistics (TP ranks duplicate them; CP ranks each hold a share of every micro-batch's tokens)
    reporter = ps.is_pipeline_last_stage(ignore_virtual=True) and ps.get_tensor_model_parallel_rank() == 0
    cp, cp_rank = ps.get_context_parallel_world_size(), ps.get_context_parallel_rank()
    device = collective_device()  # the step statistics are summed over ranks: on the GPU under NCCL
    # examples padded so that each CP rank's tokens also split over TP ranks under sequence parallelism
    cp_multiple = 2 * cp * (cfg.parallel.tp if bundle.tconfig.sequence_parallel else 1)
    nmb = cfg.train.global_batch_size // (cfg.train.micro_batch_size * dp)
    peak = peak_flops()
    log = TrajectoryLog(run_dir, start, cfg.train.tensorboard, cfg.train.wandb_project,
                        {"config": to_yaml(cfg)}) if env.is_main else None
    coverage, few_bins = tdata.data_coverage(len(bins), cfg.train.global_batch_size, cfg.train.steps)
    if env.is_main:
        n_params = num_parameters(bundle.shape, bundle.vocab_size)
        active = (f", {num_parameters(bundle.shape, bundle.vocab_size, active=True) / 1e6:,.1f}M active, "
                  f"ep={cfg.parallel.ep}" if bundle.shape.is_moe else "")
        console.print(
            f"[bold]{mode}[/] {cfg.model.preset} ({n_params / 1e6:,.1f}M params{active}, vocab {bundle.vocab_size}) "
            f"on {env.world_size} {'GPU' if torch.cuda.is_available() else 'CPU process'}(es): "
            f"tp={cfg.parallel.tp} pp={cfg.parallel.pp} cp={cfg.parallel.cp} dp={dp}, "
            f"{nmb} micro-batch(es) of {cfg.train.micro_batch_size} x {packed.seq_length} tokens per step, "
            f"{bundle.dtype}; steps {start}->{cfg.train.steps} ({coverage}); run {run_dir}"
            + (f"; T3S mask: mask.channel={cfg.mask.channel}" if cfg.mask.channel else
               f"; T3S mask: mask.rule={cfg.mask.rule}" if cfg.mask.rule else "")
        )
        if few_bins:
            console.print(f"[yellow]note:[/] {few_bins}")
    ckpt.at_start(model, start)
    bar = progress()  # drawn on interactive terminals, by rank 0 only
    if env.is_main:
        bar.start()
    task = bar.add_task(mode, total=cfg.train.steps, completed=start)

    # ---- the loop -----------------------------------------------------------------------------------
    for step in range(start, end):
        t0 = time.perf_counter()
        batches = tdata.micro_batches(bins, sampler, step, dp_rank, dp, cfg.train.micro_batch_size)
        # the attention work (MFU) of whole examples, before a CP split; only the reporters count it
        sum_sq = tdata.sum_sq_lengths(batches) if reporter else 0.0
        if dllm:  # the step's noise is a function of (seed, step, dp rank): resume redraws it exactly
            dtrain.add_noise_seeds(batches, cfg.train.seed, step, dp_rank)
        if cp > 1:  # each CP rank keeps its share of every example (noise drawn first, per example)
            if dllm:
                dtrain.add_noise(batches, cfg.model.mask_token_id, cfg.model.noise_eps)
            batches = [split_for_context_parallel(b, cp, cp_rank, cp_multiple) for b in batches]
        if moe:  # aux-loss gradient scale = the step's loss tokens / positions, over all DP replicas
            counts = torch.tensor(tmoe.step_token_counts(batches, dllm), dtype=torch.float64, device=device)
            dist.all_reduce(counts, group=ps.get_data_parallel_group())
            aux_scale.set(*counts.tolist())
        for m in model:
            m.zero_grad_buffer()
        optimizer.zero_grad()
        reports = forward_backward(
            forward_step_func=forward_step,
            data_iterator=[iter(batches) for _ in model] if len(model) > 1 else iter(batches),
            model=model,
            num_microbatches=nmb,
            **schedule_shape(bundle.packed_thd, packed.seq_length, cfg.train.micro_batch_size),
            forward_only=False,
        )
        ok, grad_norm, _ = optimizer.step()
        scheduler.step(increment=1)

        stats = torch.zeros(7, dtype=torch.float64)
        if reporter:
            for r in reports:
                stats[:2] += r["loss_sum_and_count"].double().cpu()
                if dllm:
                    stats[4] += float(r["noised_tokens"])
            stats[2] = sum(float((b["segment_ids"] >= 0).sum()) for b in batches)
            stats[3] = sum(float(b["response_mask"].sum()) for b in batches)
            stats[6] = sum_sq / cp  # every CP rank of a replica saw the same whole examples
        if moe:  # every rank holds the aux losses of its own layers and micro-batches
            stats[5] = tmoe.aux_loss_sum()
        stats = stats.to(device)
        dist.all_reduce(stats)
        stats = stats.cpu()
        t_ckpt = time.perf_counter()
        ckpt.after_step(model, optimizer, scheduler, step + 1)  # async: only the copy to host and a poll
        seconds = time.perf_counter() - t0
        ckpt_seconds = time.perf_counter() - t_ckpt
        if env.is_main:
            loss_sum, count, tokens, response, noised, aux, sum_sq_all = stats.tolist()
            tps = tokens / seconds
            rec = {
                "step": step + 1,
                "loss": loss_sum / count if count else 0.0,
                "lr": scheduler.get_lr(optimizer.param_groups[0]) if hasattr(scheduler, "get_lr") else cfg.train.lr,
                "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                "trained_tokens": int(count),
                "tokens": int(tokens),
                "tokens_per_s": tps,
                "mfu": (step_flops(bundle.shape, bundle.vocab_size, tokens, sum_sq_all, bidirectional=dllm)
                        / seconds / (peak * env.world_size)) if peak else None,
                # AR: the fraction of response tokens the T3S mask drops; dllm: the realised noised fraction
                "masked_fraction": (noised if dllm else response - count) / response if response else 0.0,
                "epoch": sampler.epoch_of(step + 1),
                "skipped": not ok,
                "seconds": seconds,
                "checkpoint_seconds": ckpt_seconds,  # time the loop waited on checkpointing this step
            }
            if moe:  # the load-balancing loss (before its coefficient), mean over MoE layers and micro-batches
                rec["moe_aux_loss"] = aux / (dp * nmb * n_moe_layers)
            log.write(rec)
            bar.update(task, advance=1, description=f"{mode} loss {rec['loss']:.4f}")
            if (step + 1) % cfg.train.log_interval == 0 or step + 1 == cfg.train.steps:
                print_line(rec, cfg.train.steps)
        if step + 1 < end and preemption.agreed():
            bar.stop()
            ckpt.save_full(model, optimizer, scheduler, step + 1)
            ckpt.close()
            if env.is_main:
                log.close()
                console.print(f"preempted: full checkpoint at step {step + 1} in {run_dir / 'checkpoints'}; "
                              f"exiting with {PREEMPTED_EXIT} (resume=auto continues from it)")
            shutdown()
            sys.exit(PREEMPTED_EXIT)

    # ---- the end ------------------------------------------------------------------------------------
    bar.stop()
    ckpt.at_end(model, optimizer, scheduler, end)  # full checkpoint (and snapshot) at `end`
    preemption.close()  # a signal during the final save waited for it: the run is complete
    if env.is_main:
        log.close()
        done = f"done: {end} steps" if end == cfg.train.steps else f"stopped at step {end}/{cfg.train.steps} (train.stop_at)"
        console.print(f"{done}; log {run_dir / 'trajectory.jsonl'}")
    shutdown()


def cli_main() -> None:
    exit_on_user_error(main)


if __name__ == "__main__":  # the guard matters: dist_checkpointing's writers re-import this module
    cli_main()
