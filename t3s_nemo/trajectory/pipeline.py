"""`t3s pipeline CONFIG`: the whole T3S recipe in one directory, each stage skipped once it is done.

    ROOT/sft/             trajectory run (plain SFT, snapshot per step), bottleneck.json, profile/
    ROOT/t3s/             masked retraining from theta_0 with pipeline.mask_rule
    ROOT/<rule>/          baselines (reverse, static-confidence, random), same recipe and steps
    ROOT/sft/rrt/         RRT checkpoint (pipeline.rrt)
    ROOT/pipeline.json    what ran, where, and the headline numbers
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from t3s_nemo.checkpoint import weights as W
from t3s_nemo.config import Config, changed_keys, load_config, locate_run_data, save_config
from t3s_nemo.console import console, heading
from t3s_nemo.errors import T3SError
from t3s_nemo.io import atomic_write_json, read_json
from t3s_nemo.trajectory.mask_build import RULES, channel_name

MASK_CHANNEL = {rule: channel_name(rule) for rule in RULES if rule != "dllm"}  # the rules a pipeline trains with


def _finished(run_dir: Path, steps: int) -> bool:
    return W.is_complete(run_dir / "checkpoints" / f"iter_{steps}")


def profiled(ds, sft_dir: Path, cfg: Config) -> bool:
    """Whether the dataset's delta channel was profiled with the selectors this config names
    (profile.selector_*, else the run's own theta_0 and theta_b)."""
    from t3s_nemo.trajectory.profile import selectors

    info = ds.channels.get("delta", {})
    made_by = [Path(info[k]).resolve() if info.get(k) else None for k in ("selector_base", "selector_bottleneck")]
    return made_by == [p.resolve() for p in selectors(sft_dir, cfg)]


def run_pipeline(config: Path, overrides: Optional[list[str]] = None, nproc: int = 1,
                 force: Optional[bool] = None) -> dict:
    from t3s_nemo.cli import launch_recipe
    from t3s_nemo.data.packed import PackedDataset
    from t3s_nemo.trajectory.bottleneck import run_bottleneck
    from t3s_nemo.trajectory.mask_build import build_mask
    from t3s_nemo.trajectory.profile import profile_run

    cfg: Config = load_config(config, overrides)
    if not cfg.run_dir:
        raise T3SError("config key 'run_dir' is required")
    root = Path(cfg.run_dir)
    if cfg.model.objective != "ar":
        raise T3SError(f"config key 'model.objective': {cfg.model.objective}; `t3s pipeline` runs the AR recipe "
                       "(its profile is causal log p). For a dLLM student: profile an AR selector run sharing the "
                       "tokenizer, `t3s mask RUN --rule dllm`, then `t3s sft` with model.objective=dllm "
                       "mask.channel=mask_dllm (docs/dllm.md)")
    if cfg.pipeline.online:
        from t3s_nemo.trajectory.online import check_online

        check_online(cfg)  # before run_dir is made
    if (root / "config.yaml").is_file():  # a rerun: finished stages are kept as they were made
        try:
            changes = changed_keys(load_config(root / "config.yaml"), cfg, ignore=("run_dir",))
        except T3SError as e:  # saved by another version
            changes = [f"(the saved config.yaml could not be read: {e})"]
        if changes:
            console.print(f"[yellow]note:[/] {root} was made with another config; stages that finished keep "
                          "their results, the rest run with the new one, but a training run that started refuses a change "
                          "to what its trajectory depends on (a new run_dir starts afresh). Changed: "
                          + "; ".join(changes))
    root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, root / "config.yaml")
    if cfg.pipeline.online:  # theta_b found while the SFT run trains (docs/online.md)
        from t3s_nemo.trajectory.online import run_online

        return run_online(cfg, root, nproc, force)
    sft_dir = root / "sft"
    sft_steps = cfg.pipeline.sft_steps or cfg.train.steps
    base_args = [str(root / "config.yaml")]

    def stage(title: str) -> None:
        heading(title)

    interval = cfg.checkpoint.snapshot_interval or 1
    every = "a snapshot per step" if interval == 1 else f"a snapshot every {interval} steps"
    stage(f"1. trajectory run: plain SFT for {sft_steps} steps, {every} -> {sft_dir}")
    if _finished(sft_dir, sft_steps):
        console.print("done already")
    else:
        launch_recipe("t3s_nemo.recipes.train", ["--mode", "sft", *base_args, f"run_dir={sft_dir}",
                                                 f"train.steps={sft_steps}", "checkpoint.snapshot_step0=true",
                                                 f"checkpoint.snapshot_interval={interval}"],
                      nproc)
    # packed on first use when data.path was empty
    data = locate_run_data(load_config(sft_dir / "config.yaml"), sft_dir).data.path

    at = "every snapshot" if cfg.bottleneck.every == 1 else f"one snapshot in {cfg.bottleneck.every}"
    stage(f"2. bottleneck: sample and verify the training prompts at {at}")
    bottleneck = run_bottleneck(sft_dir, [], force=cfg.bottleneck.force if force is None else force)
    console.print(f"theta_b = step {bottleneck['bottleneck_step']}")

    stage("3. profile: log p at theta_0 and theta_b -> delta")
    if profiled(PackedDataset(data), sft_dir, cfg):
        console.print("done already")
    else:  # the selectors this config names (the trajectory run's config.yaml keeps those it started with)
        profile_run(sft_dir, nproc, [f"profile.selector_base={cfg.profile.selector_base}",
                                     f"profile.selector_bottleneck={cfg.profile.selector_bottleneck}"])

    rules = [cfg.pipeline.mask_rule] + [b for b in cfg.pipeline.baselines if b != cfg.pipeline.mask_rule]
    stage(f"4. masks: {', '.join(rules)}")
    reports = {rule: build_mask(PackedDataset(data), rule, MASK_CHANNEL[rule], seed=cfg.train.seed) for rule in rules}
    for rule, r in reports.items():
        console.print(f"{rule}: {r['masked_fraction']:.1%} of response tokens masked")

    runs = {"sft": str(sft_dir)}
    for rule in rules:
        name = "t3s" if rule == cfg.pipeline.mask_rule else rule
        out = root / name
        stage(f"5. {'T3S retraining' if name == 't3s' else 'baseline ' + rule} from theta_0 -> {out}")
        if _finished(out, cfg.train.steps):
            console.print("done already")
        else:
            launch_recipe("t3s_nemo.recipes.train", [
                "--mode", "train", *base_args, f"run_dir={out}", f"data.path={data}",
                f"model.init={sft_dir / 'snapshots' / 'step_0'}", f"mask.channel={MASK_CHANNEL[rule]}",
                "checkpoint.snapshot_step0=false",
                f"checkpoint.snapshot_interval={cfg.checkpoint.snapshot_interval or int(cfg.pipeline.curves)}",
            ], nproc)
        runs[name] = str(out)

    if cfg.pipeline.rrt:
        from t3s_nemo.checkpoint.manager import step_dirs
        from t3s_nemo.trajectory.profile import run_checkpoints

        stage("6. RRT: theta_0 + (theta_f - theta_b)")
        if W.is_complete(sft_dir / "rrt"):
            console.print("done already")
        else:
            base, b = run_checkpoints(sft_dir)  # the student's own weights, whatever selector profiled it
            launch_recipe("t3s_nemo.recipes.rrt", [
                "--base", str(base), "--bottleneck", str(b), "--final", str(step_dirs(sft_dir / "snapshots")[-1][1]),
                "--out", str(sft_dir / "rrt"), "--overwrite", f"parallel.tp={cfg.parallel.tp}",
                f"parallel.pp={cfg.parallel.pp}"], nproc)
        runs["rrt"] = str(sft_dir / "rrt")

    summary = {"config": str(root / "config.yaml"), "data": data, "runs": runs,
               "bottleneck_step": bottleneck["bottleneck_step"], "masks": reports}
    if cfg.pipeline.curves:
        from t3s_nemo.trajectory.curves import accuracy_curves

        stage("7. train accuracy of every run along its snapshots")
        curves = accuracy_curves(root, runs, data, cfg.pipeline.curves_every)
        summary["curves"] = str(root / "curves.json")
        for r in curves["table"]:
            console.print(f"{r['method']:>18}: min {r['min_accuracy']:.3f} at step {r['min_step']}, "
                          f"final {r['final_accuracy']:.3f}")
        console.print(f"plot {root / 'accuracy_curves.png'}, table {root / 'results.md'}")
    atomic_write_json(root / "pipeline.json", summary)
    from t3s_nemo.analysis.report import write_run_report

    report = write_run_report(root, summary, bottleneck)
    console.print(f"pipeline done: {root / 'pipeline.json'}; report {report}")
    return summary


def load_summary(root: Path) -> dict:
    return read_json(Path(root) / "pipeline.json", "pipeline summary")
