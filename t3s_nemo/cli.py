"""`t3s`: one subcommand per pipeline stage. Thin: parse, call the stage, print."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from t3s_nemo.console import console, print_error
from t3s_nemo.errors import T3SError

class _Commands(typer.core.TyperGroup):
    """`t3s eval compare ...` runs the command registered as "eval compare": `eval` takes a model path as its
    first argument, so `compare` cannot be a click subcommand of it; the name with a space gives the
    compare command its own --help and usage line, and keeps it out of the command list."""

    def parse_args(self, ctx, args):
        if args[:2] == ["eval", "compare"]:
            args = ["eval compare", *args[2:]]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_Commands,
    name="t3s",
    help=(
        "T3S (Training-Trajectory-Aware Token Selection) on megatron-core.\n\n"
        "Pipeline: data pack -> sft (snapshot per step) -> bottleneck (lowest train accuracy) -> "
        "profile (delta log p between theta_0 and theta_b) -> mask -> train (masked, from theta_0) -> export. "
        "`t3s demo` runs all of it on bundled tiny data on CPU."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        import t3s_nemo

        try:
            mcore = version("megatron-core")
        except PackageNotFoundError:
            mcore = "not installed"
        print(f"t3s-nemo {t3s_nemo.__version__} (megatron-core {mcore}, python {sys.version.split()[0]})")
        raise typer.Exit()


@app.callback()
def _top(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="Print the versions of t3s-nemo and megatron-core and exit.")] = False):
    pass


data_app = typer.Typer(help="Pack, inspect and extend packed datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


# ---- data ----------------------------------------------------------------------------------------
@data_app.command("pack")
def data_pack(
    input: Annotated[list[Path], typer.Option("--input", "-i", help="JSONL file, directory of *.jsonl, or a saved HF dataset directory; repeat for several (pkg:assets/demo/train.jsonl is the bundled demo set).")],
    tokenizer: Annotated[Path, typer.Option(help="Local Hugging Face tokenizer directory (its chat template formats the examples; pkg:assets/demo/tokenizer is the bundled demo tokenizer).")],
    seq_length: Annotated[int, typer.Option("--seq-length", help="Tokens per packed bin (the training sequence length).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output directory (created; must not exist unless --overwrite).")],
    on_overflow: Annotated[str, typer.Option(help="Examples longer than --seq-length: error | drop | truncate (the response).")] = "error",
    template: Annotated[str, typer.Option(help="auto (chat template if the tokenizer has one) | chat | plain (prompt + response + eos).")] = "auto",
    prompt_field: Annotated[str, typer.Option(help="Field holding the prompt.")] = "prompt",
    response_field: Annotated[str, typer.Option(help="Field holding the teacher response.")] = "response",
    answer_field: Annotated[str, typer.Option(help="Field holding the gold answer ('' if the data has none).")] = "answer",
    messages_field: Annotated[str, typer.Option(help="Field holding a chat `messages` list (used instead of prompt/response when present).")] = "messages",
    id_field: Annotated[str, typer.Option(help="Field holding a unique example id (records without it are numbered by position).")] = "id",
    system_prompt: Annotated[str, typer.Option(help="System message prepended in chat format.")] = "",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output directory.")] = False,
):
    """Tokenize (prompt, response, answer) examples and pack them into a Megatron indexed dataset.

    Each example becomes one sequence; examples are packed whole into bins of --seq-length tokens
    (first-fit-decreasing). Channels: tokens (int32) and loss_mask (uint8, 1 on response tokens);
    meta.json keeps the tokenizer fingerprint, ids, gold answers and prompt lengths.
    """
    from t3s_nemo.config import resolve_path
    from t3s_nemo.data.pack import PackOptions, pack
    from t3s_nemo.data.source import Fields

    input, tokenizer = [Path(resolve_path(str(p))) for p in input], Path(resolve_path(str(tokenizer)))
    opts = PackOptions(
        seq_length=seq_length, on_overflow=on_overflow, template=template, system_prompt=system_prompt,
        fields=Fields(prompt=prompt_field, response=response_field, answer=answer_field,
                      messages=messages_field, id=id_field),
        overwrite=overwrite,
    )
    s = pack(input, tokenizer, output, opts)
    for line in s.lines():
        console.print(line)
    console.print(f"wrote {s.output}")


@data_app.command("inspect")
def data_inspect(
    path: Annotated[Path, typer.Argument(help="Packed dataset directory.")],
    example: Annotated[Optional[str], typer.Option(help="Example id or index to decode (default: the first).")] = None,
    mark: Annotated[Optional[str], typer.Option(help="uint8 channel whose 0s are shown struck out (default: t3s_mask if present).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON only.")] = False,
):
    """Counts, token totals, mask ratio per channel, and one decoded example with masked tokens marked."""
    from t3s_nemo.data.inspect import render_example, summary, summary_table
    from t3s_nemo.data.packed import PackedDataset

    ds = PackedDataset(path)
    s = summary(ds)
    if as_json:
        typer.echo(json.dumps(s, indent=2))
        return
    out = console.__class__(highlight=False)  # stdout
    shown = render_example(ds, example, mark, plain=out.color_system is None)  # errors before any output
    out.print(summary_table(s))
    out.print(shown)


@data_app.command("add-channel")
def data_add_channel(
    path: Annotated[Path, typer.Argument(help="Packed dataset directory.")],
    name: Annotated[str, typer.Option(help="Channel name (lowercase, e.g. delta or t3s_mask).")],
    values: Annotated[Path, typer.Option(help="Per-example values keyed by example id: .npz (keys = ids), .parquet or .jsonl (columns id, values).")],
    dtype: Annotated[str, typer.Option(help="float32 | uint8")] = "float32",
    span: Annotated[str, typer.Option(help="auto | full (a value per token) | response (a value per response token; prompt tokens get --fill).")] = "auto",
    fill: Annotated[float, typer.Option(help="Value for prompt tokens when values cover the response only.")] = 0.0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing channel of that name.")] = False,
):
    """Attach a per-token channel to a packed dataset, aligned with its tokens and bins."""
    from t3s_nemo.data.packed import PackedDataset, load_channel_file

    ds = PackedDataset(path)
    vals = load_channel_file(values)
    ds.add_channel(name, vals, dtype=dtype, span=span, fill=fill, overwrite=overwrite, info={"source": str(values)})
    console.print(f"added channel '{name}' ({dtype}) for {ds.num_examples} examples to {path}")


@data_app.command("mix")
def data_mix(
    input: Annotated[list[str], typer.Option("--input", "-i", help="TEACHER=DIR: a packed dataset of one teacher's traces with its own T3S mask; repeat per teacher.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output directory (created; must not exist unless --overwrite).")],
    ratio: Annotated[Optional[list[str]], typer.Option("--ratio", help="TEACHER=SHARE of the output (normalised; one per input, 0 leaves one out). Not with --per-prompt.")] = None,
    per_prompt: Annotated[Optional[str], typer.Option("--per-prompt", help="random (one trace per prompt, teacher picked at random) | all (every trace; the default).")] = None,
    mask_channel: Annotated[str, typer.Option("--mask-channel", help="The uint8 mask channel every input must have ('' for none).")] = "t3s_mask",
    channel: Annotated[Optional[list[str]], typer.Option("--channel", help="Another channel to carry (every input must have it); repeat for several.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sampling.")] = 0,
    seq_length: Annotated[Optional[int], typer.Option("--seq-length", help="Bin size of the mix (default: the inputs' seq_length, which must agree).")] = None,
    num_examples: Annotated[Optional[int], typer.Option("--num-examples", help="Examples in the mix (default: all the selection allows).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output directory.")] = False,
):
    """Mix several teachers' packed datasets, each with its own T3S mask, into one packed dataset.

    Run T3S per teacher first (its own trajectory, bottleneck and mask), then e.g.
    `t3s data mix --input r1=data/r1 --input qwq=data/qwq --output data/mix --per-prompt random`.
    Every example keeps its tokens, loss_mask and mask bit for bit; ids become TEACHER/ID and meta.json
    gains examples.teacher, examples.source_id and a `mix` record. All inputs must share one tokenizer.
    See docs/multi_teacher.md.
    """
    from t3s_nemo.data.mix import mix, parse_inputs, parse_ratios

    s = mix(parse_inputs(input), output, ratios=parse_ratios(ratio) if ratio else None, per_prompt=per_prompt,
            mask_channel=mask_channel or None, seed=seed, seq_length=seq_length, overwrite=overwrite,
            channels=channel or [], num_examples=num_examples)
    counts = ", ".join(f"{t} {n}" for t, n in s["counts"].items())
    shared = f"; {s['prompts']} prompts, {s['shared_prompts']} in several inputs" if "prompts" in s else ""
    console.print(f"mixed {s['num_examples']} examples ({counts}) into {s['num_bins']} bins of {s['seq_length']}, "
                  f"bin fill {s['fill']:.1%}{shared}")
    console.print(f"wrote {s['output']}")


# ---- training -------------------------------------------------------------------------------------
ConfigArg = Annotated[Path, typer.Argument(help="YAML config (e.g. configs/tiny/sft.yaml).", show_default=False)]
OverridesArg = Annotated[Optional[list[str]], typer.Argument(help="Dotted overrides, e.g. train.lr=1e-5 parallel.tp=2.", show_default=False)]
NprocOpt = Annotated[int, typer.Option("--nproc-per-node", help="Processes to start on this machine (torchrun); 1 runs in-process. Under srun, launch the recipe directly (see slurm/).")]


def launch_recipe(module: str, args: list[str], nproc: int) -> None:
    """Run a recipe in this process, or under torchrun with nproc processes (argument list, no shell)."""
    if nproc < 1:
        raise T3SError("--nproc-per-node: must be >= 1")
    if nproc == 1:
        import importlib

        importlib.import_module(module).main(args)
        return
    import subprocess

    cmd = [sys.executable, "-m", "t3s_nemo.launch", "--standalone", f"--nproc-per-node={nproc}", "-m", module, *args]
    rc = subprocess.call(cmd)
    if rc != 0:
        raise typer.Exit(rc)


@app.command("sft")
def sft(config: ConfigArg, overrides: OverridesArg = None, nproc_per_node: NprocOpt = 1):
    """Plain SFT of the student: the trajectory run of T3S.

    Reads data.path (a packed dataset), starts from model.init (a t3s checkpoint, a Hugging Face
    directory, or random init), and writes to run_dir: config.yaml, trajectory.jsonl (one line per
    step: loss, lr, grad_norm, tokens/s, MFU), snapshots/step_N (weights every
    checkpoint.snapshot_interval steps, the trajectory that `t3s bottleneck` reads), checkpoints/iter_N
    (full, resumable; resume=auto continues from the latest complete one) and tensorboard/.
    """
    _launch_train("sft", config, overrides, nproc_per_node)


@app.command("train")
def train(config: ConfigArg, overrides: OverridesArg = None, nproc_per_node: NprocOpt = 1):
    """Masked T3S retraining: the same engine as `t3s sft` with a token mask on the loss.

    Set mask.channel (a uint8 channel of the dataset, 1 = train, e.g. t3s_mask from `t3s mask`) or
    mask.rule (ar | reverse, applied to the delta channel while loading). The loss is
    sum(w * ce) / sum(w) over the global batch, w = loss_mask x mask. Outputs as `t3s sft`.
    """
    _launch_train("train", config, overrides, nproc_per_node)


def _launch_train(mode: str, config: Path, overrides: Optional[list[str]], nproc: int) -> None:
    args = ["--mode", mode, str(config), *(overrides or [])]
    if nproc > 1:  # the config's own errors once, here, before nproc processes start and each finds them
        from t3s_nemo.config import check_parallel
        from t3s_nemo.recipes.train import parse_args

        check_parallel(parse_args(args)[1], nproc)
    launch_recipe("t3s_nemo.recipes.train", args, nproc)


# ---- stages that later work fills in ---------------------------------------------------------------
def _not_yet(stage: str, issue: str) -> None:
    raise T3SError(f"`t3s {stage}` is not available yet in this version of t3s-nemo ({issue})")


@app.command("bottleneck")
def bottleneck(
    run: Annotated[Path, typer.Argument(help="A trajectory run directory (with snapshots/ and config.yaml).")],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="generation.*, bottleneck.* and data.path overrides, e.g. generation.n=8 bottleneck.rule=moving_average.", show_default=False)] = None,
    force: Annotated[Optional[bool], typer.Option("--force/--no-force", help="Pick theta_b even when no accuracy dip is found (default: bottleneck.force).")] = None,
    shard: Annotated[Optional[str], typer.Option(help="I/K: evaluate only every K-th selected snapshot from the I-th and stop without picking theta_b (one task of a job array; slurm/bottleneck.sbatch sets it). A later run without --shard picks theta_b from the saved results.")] = None,
):
    """Find the Imitation Bottleneck: the snapshot with the lowest training accuracy.

    For each snapshot (bottleneck.every / start / end), samples generation.n answers to the training
    prompts (T=0.6, top_p=0.95 by default), verifies them against the gold answers with math-verify and
    picks theta_b by bottleneck.rule (argmin | moving_average | first_recovery). Writes
    RUN/bottleneck.json, RUN/accuracy.png and RUN/bottleneck/step_N.json (finished snapshots are not
    evaluated again). Exits non-zero when accuracy never dips bottleneck.margin below theta_0's (no
    Imitation Shock: T3S does not apply) unless --force. Overrides: generation.* and bottleneck.*
    keys, and data.path (when the packed data moved).
    """
    from t3s_nemo.trajectory.bottleneck import parse_shard, run_bottleneck

    if shard is not None:
        r = run_bottleneck(run, overrides or [], force, shard=parse_shard(shard))
        done = ", ".join(f"step {s}: {a:.1%}" for s, a in zip(r["steps"], r["accuracy"])) or "no snapshot in this shard"
        console.print(f"shard {shard}: {done}; `t3s bottleneck {run}` picks theta_b once every shard is done")
        return
    r = run_bottleneck(run, overrides or [], force)
    console.print(f"theta_b = step {r['bottleneck_step']} ({r['bottleneck_dir']}); "
                  f"accuracy {r['base_accuracy']:.1%} -> {r['min_accuracy']:.1%}; {run / 'accuracy.png'}")


@app.command("profile")
def profile(
    run: Annotated[Optional[Path], typer.Argument(help="A trajectory run directory with bottleneck.json (writes channels logp0, logpb, delta into its dataset).")] = None,
    overrides: Annotated[Optional[list[str]], typer.Argument(help="With RUN: profile.* and data.path overrides, e.g. profile.selector_base=CKPT profile.selector_bottleneck=CKPT.", show_default=False)] = None,
    data: Annotated[Optional[Path], typer.Option(help="Standalone: a packed dataset.")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="Standalone: the selector checkpoint (theta_0).")] = None,
    checkpoint_b: Annotated[Optional[Path], typer.Option("--checkpoint-b", help="Standalone: a second checkpoint (theta_b); adds delta.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Standalone: output directory for logp_a.npz (logp_b.npz, delta.npz).")] = None,
    tp: Annotated[Optional[int], typer.Option(help="Tensor-parallel size (default: with RUN, the run's own as far as the processes hold it; standalone, 1).", show_default=False)] = None,
    pp: Annotated[Optional[int], typer.Option(help="Pipeline-parallel size (default: with RUN, the run's own as far as the processes hold it; standalone, 1).", show_default=False)] = None,
    nproc_per_node: NprocOpt = 1,
):
    """Per-token log p of every response token at theta_0 and theta_b (forward only, TP/PP/DP).

    With RUN: theta_0 = RUN/snapshots/step_0 (or profile.selector_base), theta_b = the bottleneck
    snapshot (or profile.selector_bottleneck); writes RUN/profile/*.npz and adds channels logp0, logpb
    and delta = logpb - logp0 to the run's packed dataset, in the run's TP/PP layout unless --tp/--pp say
    otherwise (its CP ranks, if any, become data-parallel: the pass is forward only). Standalone (--data --checkpoint [--checkpoint-b]
    --out): writes per-example arrays keyed by example id (npz) that `t3s data add-channel --span
    response` reads. A selector must share the dataset's tokenizer (checked by fingerprint).
    """
    if run is not None:
        from t3s_nemo.trajectory.profile import profile_run

        profile_run(run, nproc_per_node, overrides, tp=tp, pp=pp)
        return
    if overrides:
        raise T3SError(f"key=value overrides ({overrides[0]}, ...) go with a run directory; standalone, "
                       "pass --checkpoint and --checkpoint-b")
    parallel = [f"parallel.tp={tp or 1}", f"parallel.pp={pp or 1}"]
    if not (data and checkpoint and out):
        raise T3SError("give a run directory, or --data, --checkpoint and --out")
    args = ["--data", str(data), "--checkpoint", str(checkpoint), "--out", str(out)]
    if checkpoint_b:
        args += ["--checkpoint-b", str(checkpoint_b)]
    launch_recipe("t3s_nemo.recipes.profile", args + parallel, nproc_per_node)


@app.command("mask")
def mask(
    run: Annotated[Path, typer.Argument(help="A run directory (or a packed dataset directory) with a delta channel.")],
    rule: Annotated[str, typer.Option(help="ar (T3S) | reverse (-T3S) | static-confidence | static-confidence-low | random | dllm")] = "ar",
    name: Annotated[Optional[str], typer.Option(help="Channel name (default: t3s_mask for ar, mask_<rule> otherwise).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random baseline.")] = 0,
    tau: Annotated[float, typer.Option(help="dllm: targets are tokens with delta < -tau.")] = 0.2,
):
    """Build a T3S mask channel (1 = train on the token) and a report of the anchor tokens.

    ar drops imitation anchors (delta > 0); reverse keeps only them; static-confidence and random drop
    the same fraction by theta_0 confidence (highest or lowest first) or at random; dllm marks the
    yet-to-learn targets (delta < -tau) for the diffusion objective. Writes the channel into the dataset
    and DIR/masks/<channel>.json, .html (examples with anchors highlighted) and .png; train with
    `t3s train CONFIG mask.channel=<channel>`.
    """
    from t3s_nemo.config import load_config, locate_run_data, run_data
    from t3s_nemo.data.packed import PackedDataset
    from t3s_nemo.trajectory.mask_build import build_mask, channel_name, check_rule

    check_rule(rule)  # before the dataset is looked for
    data = (run_data(locate_run_data(load_config(run / "config.yaml"), run), run) if (run / "config.yaml").is_file()
            else run)
    ds = PackedDataset(data)
    before = ds.channels.get(channel_name(rule, name))
    r = build_mask(ds, rule, name, seed, tau=tau)
    if before is not None:
        made = ", ".join(f"{k} {before[k]}" for k in ("rule", "seed") if k in before)
        console.print(f"note: replaced the channel {r['channel']}{f' ({made})' if made else ''}; runs trained on "
                      "it keep their checkpoints, a resumed one trains on the new mask")
    what = (f"{r['target_fraction']:.1%} of {r['response_tokens']:,} response tokens are targets (always noised)"
            if rule == "dllm" else f"{r['masked_fraction']:.1%} of {r['response_tokens']:,} response tokens masked")
    # the dLLM's targets are the tokens that lost the most confidence (delta < -tau), not the anchors
    # the anchors (delta > 0) whatever the rule: what ar masks, what reverse keeps, a reference for the others
    key, label = (("top_target_tokens", "top targets (delta < -tau)") if rule == "dllm" else
                  ("top_anchor_tokens", {"ar": "top anchors (masked)", "reverse": "top anchors (the tokens kept)"}.get(
                      rule, "top imitation anchors (delta > 0; not what this rule masks)")))
    console.print(f"{r['channel']}: rule {rule}, {what}; {label}: " + ", ".join(repr(t["token"]) for t in r[key][:10]))
    console.print(f"report: {Path(data) / 'masks' / (r['channel'] + '.html')}")


@app.command("rrt")
def rrt(
    run: Annotated[Optional[Path], typer.Argument(help="A trajectory run with bottleneck.json (sets the three checkpoints).")] = None,
    base: Annotated[Optional[Path], typer.Option(help="theta_0 checkpoint (default RUN/snapshots/step_0).")] = None,
    bottleneck: Annotated[Optional[Path], typer.Option(help="theta_b checkpoint (default: RUN's bottleneck).")] = None,
    final: Annotated[Optional[Path], typer.Option(help="theta_f checkpoint (default: RUN's last snapshot).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output checkpoint (default RUN/rrt).")] = None,
    tp: Annotated[Optional[int], typer.Option(help="Tensor-parallel size to compute at (default: with RUN, the run's own as far as the processes hold it; else 1).", show_default=False)] = None,
    pp: Annotated[Optional[int], typer.Option(help="Pipeline-parallel size to compute at (default: with RUN, the run's own as far as the processes hold it; else 1).", show_default=False)] = None,
    nproc_per_node: NprocOpt = 1,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
):
    """Recovering Residual Transfer: theta_0 + (theta_f - theta_b), the parameter-space baseline.

    Computed shard by shard: each of the --nproc-per-node ranks (at --tp/--pp) loads only its shard of
    the three checkpoints, whatever layout they were saved at, and holds it with one fp32 accumulator
    (a 32B model in one process: about 262 GB of host memory on CPU). Writes a t3s weights checkpoint.
    """
    parallel = [f"parallel.tp={tp or 1}", f"parallel.pp={pp or 1}"]
    if run is not None:
        from t3s_nemo.checkpoint.manager import step_dirs
        from t3s_nemo.config import load_config
        from t3s_nemo.trajectory.profile import run_checkpoints, run_layout

        cfg = load_config(run / "config.yaml")
        # the student's own theta_0 and theta_b (whatever selector profiled it), where not given
        base, bottleneck = run_checkpoints(run, str(base or ""), str(bottleneck or ""))
        if final is None:
            from t3s_nemo.config import pipeline_hint

            snaps = step_dirs(run / "snapshots")
            if not snaps:
                raise T3SError(f"{run}/snapshots: no complete snapshots for theta_f (pass --final)" + pipeline_hint(run))
            final = snaps[-1][1]
        out = out or run / "rrt"
        parallel, note = run_layout(cfg, nproc_per_node, tp, pp, doing="computing RRT")
        if note:
            console.print(f"[yellow]note:[/] {note}")
    if not (base and bottleneck and final and out):
        raise T3SError("rrt: give a run directory, or --base, --bottleneck, --final and --out")
    args = ["--base", str(base), "--bottleneck", str(bottleneck), "--final", str(final), "--out", str(out),
            *parallel] + (["--overwrite"] if overwrite else [])
    launch_recipe("t3s_nemo.recipes.rrt", args, nproc_per_node)


@app.command("export")
def export(
    ckpt: Annotated[Path, typer.Argument(help="A t3s checkpoint or snapshot directory (any TP/PP layout).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Hugging Face output directory.")],
    tokenizer: Annotated[Optional[Path], typer.Option(help="Tokenizer directory (default: the one recorded in the checkpoint).")] = None,
    dtype: Annotated[str, typer.Option(help="auto (the training dtype) | bf16 | fp32")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output directory.")] = False,
):
    """Export a checkpoint to a Hugging Face Qwen3 directory that transformers and vLLM load as-is.

    Writes model.safetensors, config.json, generation_config.json (T=0.6, top_p=0.95) and the
    tokenizer files. Runs in one process; the checkpoint may have been saved at any layout.
    """
    from t3s_nemo.model.hf import export as do_export

    console.print(f"wrote {do_export(ckpt, out, tokenizer, dtype, overwrite)}")


@app.command("import")
def import_(
    hf_dir: Annotated[Path, typer.Argument(help="A Hugging Face Qwen3 directory (safetensors + config.json + tokenizer).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="t3s checkpoint directory to write.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output directory.")] = False,
):
    """Import a Hugging Face Qwen3 checkpoint as a t3s weights checkpoint (use it as model.init).

    The result loads at any TP/PP layout. Runs in one process and holds the whole model in memory;
    `model.init=HF_DIR` in a run does this conversion for you.
    """
    from t3s_nemo.model.hf import import_ as do_import

    console.print(f"wrote {do_import(hf_dir, out, overwrite)}")


@app.command("pipeline")
def pipeline(
    config: ConfigArg,
    overrides: OverridesArg = None,
    nproc_per_node: NprocOpt = 1,
    force: Annotated[Optional[bool], typer.Option("--force/--no-force", help="Pick theta_b even when no accuracy dip is found (default: bottleneck.force).")] = None,
):
    """sft -> bottleneck -> profile -> masks -> T3S retraining (+ baselines, RRT) in run_dir.

    Each stage is skipped when its output is complete, so rerunning the same command resumes. Keys:
    pipeline.mask_rule (ar), pipeline.baselines (reverse, static-confidence, static-confidence-low,
    random), pipeline.rrt,
    pipeline.sft_steps (the trajectory run's length; train.steps is the retraining's).
    pipeline.online=true: online T3S, theta_b detected while SFT trains (online.eval_every, online.patience,
    online.num_prompts, online.restart=theta0|current; docs/online.md).
    """
    from t3s_nemo.trajectory.pipeline import run_pipeline

    run_pipeline(config, overrides, nproc_per_node, force)


@app.command("eval")
def eval_(
    model: Annotated[Path, typer.Argument(help="A t3s checkpoint (snapshot or full) or a Hugging Face directory.", show_default=False)],
    benchmark: Annotated[Optional[list[Path]], typer.Option(help="Benchmark JSONL (fields problem, answer); repeat for several.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output directory (results.json, one JSONL per benchmark).")] = None,
    n: Annotated[int, typer.Option(help="Samples per problem (k).")] = 32,
    temperature: Annotated[float, typer.Option()] = 0.6,
    top_p: Annotated[float, typer.Option("--top-p")] = 0.95,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 32768,
    backend: Annotated[str, typer.Option(help="auto (vLLM on GPU if installed; else transformers at --tp 1, megatron for a t3s checkpoint at --tp > 1; a dLLM always megatron) | transformers | vllm | megatron (a t3s checkpoint sampled by megatron-core, no export; dLLM checkpoints too)")] = "auto",
    tp: Annotated[int, typer.Option(help="Tensor-parallel size of vLLM or megatron (transformers samples on one device; auto with --tp > 1 and no vLLM picks megatron).")] = 1,
    batch_size: Annotated[int, typer.Option(help="Problems per generation batch.")] = 64,
    seed: Annotated[int, typer.Option()] = 0,
    tokenizer: Annotated[Optional[Path], typer.Option(help="Tokenizer (default: the checkpoint's).")] = None,
    problem_field: Annotated[str, typer.Option(help="Benchmark field with the problem.")] = "problem",
    answer_field: Annotated[str, typer.Option(help="Benchmark field with the gold answer.")] = "answer",
):
    """avg@k, pass@k and generated tokens on local benchmarks; `t3s eval compare` tables several results.

    t3s eval CKPT --benchmark aime24.jsonl --benchmark aime25.jsonl --out evals/t3s   (resumable)
    t3s eval compare base=evals/base/results.json t3s=evals/t3s/results.json --out compare.png

    Answers are taken from \\boxed{} and checked with math-verify. Defaults follow the paper's
    protocol: 32 samples, temperature 0.6, top_p 0.95. t3s checkpoints are exported to HF first,
    except with the megatron backend, which samples them as they are.
    """
    from t3s_nemo.trajectory import evaluate as E

    if not benchmark or not out:
        raise T3SError("eval: --benchmark and --out are required")
    from t3s_nemo.config import GenerationConfig

    gen = GenerationConfig(backend=backend, n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                           batch_size=batch_size, seed=seed, tp=tp)
    r = E.evaluate(model, benchmark, out, gen, tokenizer, problem_field, answer_field)
    _wide_console().print(E.table({model.name: r}))
    console.print(f"wrote {out / 'results.json'}")


def _wide_console():
    """A console at least 110 columns wide for tables: in a log rich assumes 80 and squeezes their columns."""
    return console.__class__(highlight=False, width=max(110, console.width))


@app.command("eval compare", hidden=True)  # `t3s eval compare`: see _Commands
def eval_compare(
    results: Annotated[list[Path], typer.Argument(help="`t3s eval` results.json files; LABEL=PATH names a row (default: the file's directory name).", show_default=False)],
    out: Annotated[Optional[Path], typer.Option(help="Also plot avg@k per benchmark to this file (.png, .pdf or .svg).")] = None,
):
    """A table (and with --out a plot) of several `t3s eval` results, one row per results.json.

    t3s eval compare base=evals/base/results.json t3s=evals/t3s/results.json --out compare.png
    """
    from t3s_nemo.io import read_json
    from t3s_nemo.trajectory import evaluate as E

    if out:
        E.check_plot_path(out)
    loaded, where = {}, {}
    for item in results:
        item = str(item)
        # LABEL=PATH, split at the first '='; a path that exists as given may hold '=' itself (lr=1e-5/)
        label, _, path = ("", "", item) if "=" not in item or Path(item).exists() else item.partition("=")
        r = read_json(Path(path), "eval results")
        E.check_results(r, path)
        label = label or Path(path).parent.name
        if label in loaded:
            raise T3SError(f"{item}: label '{label}' is also {where[label]}'s; name them: LABEL=PATH")
        loaded[label], where[label] = r, path
    _wide_console().print(E.table(loaded))
    if out:
        E.compare_plot(loaded, out)
        console.print(f"wrote {out}")


@app.command("config")
def config_(
    config: Annotated[Optional[Path], typer.Argument(help="YAML config (default: the built-in defaults).", show_default=False)] = None,
    overrides: OverridesArg = None,
    nproc_per_node: Annotated[Optional[int], typer.Option(help="Also check the parallel layout for this many processes (times --nnodes).", show_default=False)] = None,
    nnodes: Annotated[int, typer.Option(help="Nodes, with --nproc-per-node.")] = 1,
):
    """Print the resolved config: every key with its value and what it means, after the overrides.

    What a run started with the same arguments uses; its run_dir/config.yaml also records what the run
    resolves (data.path made absolute, data.seq_length of the packed dataset, a dLLM's mask_token_id).
    The config is checked as a run checks it: unknown keys, types, choices and ranges; with
    --nproc-per-node, also the parallel layout against the world size, before you queue a job.

    t3s config configs/qwen3_32b/sft.yaml train.lr=1e-5 --nproc-per-node 8 --nnodes 2
    """
    from t3s_nemo.config import annotated_yaml, check_parallel, load_config

    overrides = list(overrides or [])
    if config is not None and "=" in str(config) and not config.exists():  # `t3s config train.lr=1e-5`
        config, overrides = None, [str(config), *overrides]
    cfg = load_config(config, overrides)
    layout = ""
    if nproc_per_node is not None:
        if nproc_per_node < 1 or nnodes < 1:
            raise T3SError("--nproc-per-node and --nnodes: must be >= 1")
        dp = check_parallel(cfg, nproc_per_node * nnodes)
        layout = (f"# layout: {nproc_per_node * nnodes} processes = tp {cfg.parallel.tp} x pp {cfg.parallel.pp} "
                  f"x cp {cfg.parallel.cp} x dp {dp}\n")
    typer.echo(annotated_yaml(cfg) + layout, nl=False)


@app.command("plan")
def plan(
    config: ConfigArg,
    overrides: OverridesArg = None,
    gpus: Annotated[Optional[int], typer.Option(help="GPUs in the job (default: tp*pp*max(cp, ep) of the config).")] = None,
    gpu_memory: Annotated[float, typer.Option(help="GiB per GPU (H100 80GB: 79.6).")] = 79.6,
    vocab_size: Annotated[Optional[int], typer.Option(help="Tokenizer vocabulary (default: the config's data.tokenizer when set, else Qwen3's 151669).", show_default=False)] = None,
):
    """Memory per GPU of the config's layout and of nearby TP/PP/CP choices at 8k/16k/32k tokens (and data.seq_length).

    Weights, gradients, distributed-optimizer state, activations (with the configured recomputation)
    and logits on the busiest rank. Parameters per rank are counted on the real megatron-core model of
    the first and the last pipeline stage of each layout, built on the meta device (no memory, no GPU);
    MoE presets (llada2_mini) at the config's parallel.ep. Pass the tokenizer's --vocab-size (LLaDA2.0:
    157184). An estimate to choose a layout with, not a guarantee.
    """
    from t3s_nemo.config import load_config
    from t3s_nemo.model import plan as P
    from t3s_nemo.devices import te_available
    from t3s_nemo.model.qwen3 import check_shape, num_parameters, padded_vocab_size, resolve_shape

    cfg = load_config(config, overrides)
    shape = resolve_shape(cfg.model)
    p = cfg.parallel
    check_shape(shape, p.tp, p.pp, p.vpp, p.ep)
    for flag, value in (("--gpus", gpus), ("--vocab-size", vocab_size), ("--gpu-memory", gpu_memory)):
        if value is not None and value <= 0:
            raise T3SError(f"{flag} {value}: must be > 0")
    if vocab_size is None:
        vocab_size = 151669
        if cfg.data.tokenizer:
            from t3s_nemo.config import resolve_path
            from t3s_nemo.data.tokenizer import load_tokenizer

            vocab_size = len(load_tokenizer(resolve_path(cfg.data.tokenizer)))
    # a run from model.init keeps its weights' vocabulary rows at any TP (Qwen3: 151,936)
    inherited = None
    if cfg.model.init:
        from t3s_nemo.checkpoint.manager import inherited_vocab_rows

        inherited = inherited_vocab_rows(Path("."), "never", cfg.model.init)[0]

    def vocab_rows(tp: int) -> int:
        return inherited or padded_vocab_size(vocab_size, tp)

    n = gpus or p.tp * p.pp * max(p.cp, p.ep)
    layouts = [(p.tp, p.pp, p.cp)] + [l for l in ((8, 1, 1), (8, 2, 1), (8, 4, 1), (8, 2, 2), (4, 2, 1), (4, 4, 1), (2, 4, 1))
                                      if l != (p.tp, p.pp, p.cp)]
    layouts = [(tp, pp, cp) for tp, pp, cp in layouts
               if not (shape.num_layers % pp or shape.num_attention_heads % tp or shape.num_query_groups % tp
                       or n % (tp * pp * cp) or n % (tp * pp * p.ep))]
    if not layouts:
        raise T3SError(f"{n} GPUs{'' if gpus else ' (tp*pp*max(cp, ep) of the config)'}: no layout fits "
                       f"(tp*pp*cp and tp*pp*ep={p.tp * p.pp * p.ep} must divide the GPU count)")
    with console.status("building each layout's first and last pipeline stage on the meta device"):
        params = P.meta_rank_params(shape, vocab_size, sorted({(tp, pp, p.ep) for tp, pp, _ in layouts}), inherited)
    # context parallelism all-gathers K and V with the sdpa spec; TE's ring attention does not
    spec = cfg.model.spec if cfg.model.spec != "auto" else ("te" if te_available() else "sdpa")
    gathered_kv = spec != "te"
    table = []
    for tp, pp, cp in layouts:
        for seq in sorted({cfg.data.seq_length, 8192, 16384, 32768}):
            table.append(P.estimate(shape, vocab_rows(tp), tp, pp, cp, n // (tp * pp * cp), seq,
                                   cfg.train.micro_batch_size, cfg.model.recompute,
                                   p.sequence_parallel, p.distributed_optimizer, cfg.train.precision != "fp32",
                                   params=params[(tp, pp, p.ep)], ep=p.ep, gathered_kv=gathered_kv))
    out = _wide_console()
    total = num_parameters(shape, vocab_rows(1))
    size = f"{P.count(total)} parameters"
    if shape.is_moe:
        size += (f" ({P.count(num_parameters(shape, vocab_rows(1), active=True))} active per "
                 f"token; {shape.num_experts} experts, top-{shape.moe_topk}, ep={p.ep})")
    vocab = f"{inherited:,} vocabulary rows (model.init's)" if inherited else f"a {vocab_size:,}-token vocabulary"
    how_many = f"{n} GPUs" if gpus else f"{n} GPUs (the layout's fewest; --gpus N for more data-parallel ranks)"
    out.print(f"{cfg.model.preset}: {size}, {vocab}; {how_many}; first row group = the config's layout "
              f"(tp={p.tp} pp={p.pp} cp={p.cp}), recompute={cfg.model.recompute}")
    out.print(P.table(table, gpu_memory))
    if any(r.cp > 1 for r in table):
        auto = " (auto: no Transformer Engine here)" if cfg.model.spec == "auto" and spec == "sdpa" else ""
        out.print(f"cp > 1 rows: model.spec {spec}{auto}"
                  + (", whose context parallelism all-gathers K and V: counted in activ" if gathered_kv
                     else ": ring attention, no all-gathered K and V"))


analyze_app = typer.Typer(help="The paper's mechanism diagnostics on a profiled trajectory run.", no_args_is_help=True)
app.add_typer(analyze_app, name="analyze")


@analyze_app.command("gradients")
def analyze_gradients(
    run: Annotated[Path, typer.Argument(help="A trajectory run with snapshots whose dataset has a delta channel (`t3s profile RUN`).")],
    every: Annotated[int, typer.Option(help="Use every k-th snapshot (the last one always).")] = 1,
    num_bins: Annotated[int, typer.Option(help="Packed bins in the fixed batch (seeded choice).")] = 16,
    tp: Annotated[int, typer.Option(help="Tensor-parallel size (run with --nproc-per-node equal to it).")] = 1,
    out: Annotated[Optional[Path], typer.Option(help="Output directory (default RUN/analysis).")] = None,
    nproc_per_node: NprocOpt = 1,
):
    """Per snapshot: gradient norm of the imitation anchors (delta > 0) vs the other response tokens, and their cosine.

    Each group's gradient is its share of the SFT loss gradient on a fixed batch (g = g_anchor + g_other).
    The paper reports anchors' gradients ~17x the others' early and a cosine of about -0.4 during the
    crash. Writes OUT/gradients.json and gradients.png (theta_b marked when bottleneck.json exists).
    """
    from t3s_nemo.analysis.diagnostics import analyze_gradients as run_it

    result = run_it(run, every, num_bins, tp, nproc_per_node, out)
    for r in result["rows"]:
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
        cos = f"{r['cosine']:+.2f}" if r["cosine"] is not None else "-"
        console.print(f"step {r['step']:>5}: |g_anchor| {r['anchor_grad_norm']:.3g}  |g_other| "
                      f"{r['other_grad_norm']:.3g}  ratio {ratio}  cosine {cos}")
    console.print(f"wrote {(out or Path(run) / 'analysis') / 'gradients.png'}")


@analyze_app.command("transfer")
def analyze_transfer(
    run: Annotated[Path, typer.Argument(help="A trajectory run with snapshots whose dataset has a delta channel (`t3s profile RUN`).")],
    checkpoint: Annotated[Optional[str], typer.Option(help="A snapshot step (e.g. 0 or step_12) or a checkpoint path; default theta_0.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="SGD step size of the one update (default the run's train.lr).")] = None,
    groups: Annotated[int, typer.Option(help="Token groups: quantiles of delta (Q1 = lowest).")] = 4,
    num_bins: Annotated[int, typer.Option(help="Packed bins to update on (and as many other bins to measure on).")] = 16,
    tp: Annotated[int, typer.Option(help="Tensor-parallel size (run with --nproc-per-node equal to it).")] = 1,
    out: Annotated[Optional[Path], typer.Option(help="Output directory (default RUN/analysis).")] = None,
    nproc_per_node: NprocOpt = 1,
):
    """The loss-transfer matrix: one SGD step on token group i, change of group j's loss on held-out bins.

    Groups are quantiles of delta over the response tokens (Q1 = most yet-to-learn, the last = the
    anchors' end). Negative entries: the update on i lowered j's loss. Writes OUT/transfer.json and transfer.png.
    """
    from t3s_nemo.analysis.diagnostics import analyze_transfer as run_it

    result = run_it(run, checkpoint, lr, groups, num_bins, tp, nproc_per_node, out)
    n = result["groups"]
    console.print("loss change on group j (columns) after one step on group i (rows), x1e3:")
    console.print("      " + "".join(f"{'Q' + str(j + 1):>9}" for j in range(n)))
    for i, row in enumerate(result["matrix"]):
        console.print(f"  Q{i + 1}  " + "".join(f"{1e3 * x:>+9.2f}" for x in row))
    console.print(f"wrote {(out or Path(run) / 'analysis') / 'transfer.png'}")


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option(help="Run directory for the demo.")] = Path("runs/demo"),
    steps: Annotated[Optional[int], typer.Option(help="Steps of the trajectory run and of each retraining run (default: configs/demo/t3s.yaml, 40).")] = None,
    seed: Annotated[int, typer.Option(help="train.seed and generation.seed (data order, sampling); 1-3 are the seeds in docs/results/demo.md. Another seed or --steps needs another --out or --overwrite.")] = 1,
    student: Annotated[Optional[Path], typer.Option(help="The student (theta_0): a HF directory; default the bundled one. With --rebuild-student: where to write it.")] = None,
    rebuild_student: Annotated[bool, typer.Option(help="Pre-train the student from random weights first (stage 0, about 7 minutes on 2 cores; the bundled weights bit for bit on the machine and versions that made them, t3s_nemo/demo/student.py).")] = False,
    nproc_per_node: NprocOpt = 1,
    overwrite: Annotated[bool, typer.Option(help="Start over instead of resuming an earlier demo run (--out must hold a demo run or be empty).")] = False,
):
    """The Imitation Shock and T3S at toy scale, on CPU (2-4.5 minutes on 2 cores, by CPU model).

    A 0.8M-parameter student that solves 97% of a bundled arithmetic task in its own terse style is
    distilled on an R1-like teacher's traces of the same problems. Runs the whole pipeline
    (configs/demo/t3s.yaml): SFT trajectory, bottleneck, profile, masks, T3S retraining, the -T3S /
    static-confidence / random baselines, RRT, then every run's train accuracy on one plot
    (OUT/accuracy_curves.png, OUT/results.md). Resumable: rerun the same command after an interruption.
    Measured results over 3 seeds: docs/results/demo.md.
    """
    from t3s_nemo.demo.run import run_demo

    if steps is not None and steps < 1:
        raise T3SError(f"--steps {steps}: must be at least 1")
    run_demo(out, steps, nproc_per_node, overwrite, seed, student, rebuild_student)


_OWN_LINE = (" ", "- ", "|", "t3s ", "python ")  # indented text, list items, tables, command examples


def _reflow(doc: str) -> str:
    """A docstring as help text: the lines of each paragraph joined, so the terminal wraps them.

    Typer's rich mode keeps a docstring's line breaks and then wraps at the terminal width, which leaves
    ragged half-lines. Lines that start a list item ("- "), a table row or a command example, or are
    indented, keep their break; an indented line under a list item continues it.
    """
    import inspect

    paragraphs = []
    for para in inspect.cleandoc(doc).split("\n\n"):
        lines: list[str] = []
        for line in para.split("\n"):
            if lines and line and not line.startswith(_OWN_LINE) and not lines[-1].startswith(_OWN_LINE):
                lines[-1] += " " + line
            elif lines and lines[-1].startswith("- ") and line.startswith("  ") and not line.lstrip().startswith("- "):
                lines[-1] += " " + line.strip()
            else:
                lines.append(line)
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


def _reflow_help(typer_app) -> None:
    for info in typer_app.registered_commands:
        if info.callback is not None and info.callback.__doc__:
            info.callback.__doc__ = _reflow(info.callback.__doc__)
    for group in typer_app.registered_groups:
        _reflow_help(group.typer_instance)


def main() -> None:
    _reflow_help(app)
    try:
        rc = app(prog_name="t3s", standalone_mode=False)  # without standalone mode, click returns typer.Exit's code instead of exiting
        if isinstance(rc, int) and rc != 0:
            sys.exit(rc)
    except T3SError as e:
        print_error(e)
        sys.exit(1)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        console.print("aborted")
        sys.exit(130)
    except Exception as e:  # usage errors arrive here with standalone_mode=False
        # typer may bundle its own click, so match click's exception protocol rather than its class
        if hasattr(e, "show") and isinstance(getattr(e, "exit_code", None), int):
            e.show()
            sys.exit(e.exit_code or 2)
        raise


if __name__ == "__main__":
    main()
