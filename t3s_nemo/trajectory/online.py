"""Online T3S: `t3s pipeline CONFIG pipeline.online=true` finds theta_b while the SFT run trains.

One driver, one state file, three phases (docs/online.md):

    sft      plain SFT from theta_0 in chunks of m = online.eval_every steps (train.stop_at; each chunk
             resumes bit-exactly from the previous chunk's full checkpoint), a snapshot at every chunk
             boundary; after each chunk the fixed prompt subset is sampled and verified on the new snapshot
             (the `t3s bottleneck` evaluator, results in sft/bottleneck/step_N.json) and the rule is applied
             with patience. theta_0's log p is computed once, after the first chunk (channel logp0).
    profile  log p at theta_b only (theta_0's is reused) -> channels logpb, delta; then the mask channel.
    masked   masked training from theta_0 (online.restart=theta0, the paper) or from the weights at
             detection (online.restart=current), train.steps steps, in its own run directory.

    ROOT/online.json          the state: phase, the accuracy curve, the detection, the mask report
    ROOT/sft/                 the SFT phase: trajectory.jsonl, snapshots/step_{0,m,2m..}, checkpoints/
    ROOT/sft/profile/         logp_a.npz (theta_0), logp_b.npz (theta_b), delta.npz, as in the offline pipeline
    ROOT/t3s/                 the masked phase: trajectory.jsonl (masked_fraction per step), checkpoints/
    ROOT/trajectory.jsonl     both phases in one log, each record with its `phase` and `online_step`

Every step is idempotent and recorded in online.json only once complete, so rerunning the same command
after a crash (kill -9 included) continues where it stopped.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Optional, Sequence

from t3s_nemo.checkpoint import weights as W
from t3s_nemo.config import Config, load_config, locate_run_data
from t3s_nemo.console import console, heading
from t3s_nemo.errors import T3SError
from t3s_nemo.io import atomic_write_json, atomic_write_text, read_json
from t3s_nemo.trajectory.bottleneck import select

STATE = "online.json"
VERSION = 1
# settings a resumed run must share with the run that wrote online.json: changing them mid-run would
# mix two experiments in one curve
FROZEN = ("eval_every", "num_prompts", "patience", "force_step", "restart", "rule", "window", "recovery",
          "margin", "tolerance", "sft_steps", "mask_rule")
KILL_ENV = "T3S_ONLINE_KILL_AT"  # tests: SIGKILL this process at a named point (see _checkpoint_hook)


# ---- detection: a pure function of the curve so far ----------------------------------------------------
def detect(steps: Sequence[int], accuracy: Sequence[float], rule: str, patience: int, window: int = 3,
           recovery: float = 0.05, margin: float = 0.02, force_step: Optional[int] = None,
           tolerance: float = 0.0) -> Optional[dict]:
    """theta_b once the curve so far shows it, else None (keep training).

    steps/accuracy: the evaluations so far, steps[0] = 0 (theta_0). The rule (`t3s bottleneck`'s: argmin,
    moving_average, first_recovery) picks a candidate on the curve so far; it is detected once it is at
    least `margin` below theta_0 (a dip: the Imitation Shock), first_recovery has seen the recovery, and
    `patience` later evaluations did not go below it (for moving_average: below its smoothed value) by
    more than bottleneck.tolerance.
    force_step: detect exactly there once it is evaluated, whatever the curve (tests, re-runs).
    """
    if len(steps) != len(accuracy):
        raise ValueError("steps and accuracy differ in length")
    if force_step is not None:
        if force_step in steps:
            return {"step": int(force_step), "at_step": int(steps[-1]), "reason": "forced",
                    "accuracy": float(accuracy[list(steps).index(force_step)])}
        return None
    if len(steps) < 2:
        return None
    sel = select(accuracy, rule, window, recovery, margin, tolerance)
    if sel.no_dip or sel.recovered is False:
        return None
    values = sel.smoothed if sel.smoothed is not None else [float(a) for a in accuracy]
    later = values[sel.index + 1 :]
    if len(later) < patience or any(v < values[sel.index] - tolerance - 1e-12 for v in later):
        return None
    return {"step": int(steps[sel.index]), "at_step": int(steps[-1]), "reason": f"{rule}+patience",
            "accuracy": float(accuracy[sel.index]), "dip": float(sel.dip)}


def at_budget_end(steps: Sequence[int], accuracy: Sequence[float], rule: str, window: int, recovery: float,
                  margin: float, force: bool, run_dir: Path, tolerance: float = 0.0) -> dict:
    """The SFT budget ran out before a detection: the offline rule on the whole curve (patience waived)."""
    from t3s_nemo.trajectory.bottleneck import no_dip_message

    sel = select(accuracy, rule, window, recovery, margin, tolerance)
    if sel.no_dip and not force:
        raise T3SError(no_dip_message(run_dir, steps, sel, margin).replace("pass --force", "rerun with --force"))
    return {"step": int(steps[sel.index]), "at_step": int(steps[-1]), "reason": "budget_end" + ("+forced" if sel.no_dip else ""),
            "accuracy": float(accuracy[sel.index]), "dip": float(sel.dip)}


# ---- the state file ------------------------------------------------------------------------------------
def _settings(cfg: Config, sft_steps: int) -> dict:
    o, b = cfg.online, cfg.bottleneck
    return {"eval_every": o.eval_every, "num_prompts": o.num_prompts, "patience": o.patience,
            "force_step": o.force_step, "restart": o.restart, "rule": b.rule, "window": b.window,
            "recovery": b.recovery, "margin": b.margin, "tolerance": b.tolerance, "sft_steps": sft_steps, "mask_rule": cfg.pipeline.mask_rule}


def load_state(root: Path, settings: dict) -> dict:
    path = root / STATE
    if not path.is_file():
        return {"version": VERSION, "phase": "sft", "settings": settings, "evaluations": [], "logp0": None,
                "detection": None, "profile_b": None, "mask": None, "masked_dir": None}
    state = read_json(path, "online state")
    if state.get("version") != VERSION:
        raise T3SError(f"{path}: online state version {state.get('version')} (this t3s writes {VERSION}); "
                       "use a new run_dir")
    defaults = {"tolerance": 0.0}  # keys added after online.json v1 was first written
    saved, settings = {**defaults, **state["settings"]}, {**defaults, **settings}
    changed = [k for k in FROZEN if saved.get(k) != settings.get(k)]
    if changed:
        k = changed[0]
        section = ("pipeline" if k in ("sft_steps", "mask_rule") else
                   "bottleneck" if k in ("rule", "window", "recovery", "margin", "tolerance") else "online")
        raise T3SError(f"{path}: this online run was started with {section}.{k}={saved.get(k)!r}, "
                       f"now {settings.get(k)!r}; changing it mid-run would mix two experiments (use the "
                       f"old value or a new run_dir)")
    return state


def save_state(root: Path, state: dict) -> None:
    atomic_write_json(root / STATE, state)


def _checkpoint_hook(point: str) -> None:
    """Die like kill -9 at a named point when T3S_ONLINE_KILL_AT says so (the resume tests use it)."""
    if os.environ.get(KILL_ENV) == point:
        console.print(f"{KILL_ENV}={point}: killing this process (SIGKILL)")
        os.kill(os.getpid(), signal.SIGKILL)


# ---- the driver ----------------------------------------------------------------------------------------
def _last_full(run_dir: Path) -> int:
    from t3s_nemo.checkpoint.manager import step_dirs

    done = step_dirs(run_dir / "checkpoints")
    return done[-1][0] if done else 0


def _save_npz(path: Path, arrays: dict) -> None:
    import numpy as np

    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def check_online(cfg: Config) -> int:
    """Refuse settings online mode cannot honour (before anything is written); returns the SFT budget."""
    o = cfg.online
    budget = cfg.pipeline.sft_steps or cfg.train.steps
    if o.force_step is not None and o.force_step > budget:
        raise T3SError(f"config key 'online.force_step': {o.force_step} is past the SFT budget "
                       f"(pipeline.sft_steps or train.steps = {budget})")
    if cfg.pipeline.baselines or cfg.pipeline.rrt:
        raise T3SError("config keys 'pipeline.baselines'/'pipeline.rrt': online mode trains the T3S run only; "
                       "run baselines and RRT with the offline pipeline (pipeline.online=false)")
    if cfg.profile.selector_base or cfg.profile.selector_bottleneck:
        raise T3SError("config keys 'profile.selector_base'/'profile.selector_bottleneck': online mode profiles "
                       "the student's own snapshots; use another selector with the offline pipeline "
                       "(pipeline.online=false)")
    return budget


def run_online(cfg: Config, root: Path, nproc: int = 1, force: Optional[bool] = None) -> dict:
    """Run (or continue) online T3S in root; returns the final online.json."""
    from t3s_nemo.cli import launch_recipe
    from t3s_nemo.data.packed import PackedDataset, load_channel_file
    from t3s_nemo.trajectory.bottleneck import PLOT, read_losses, run_bottleneck, write_plot
    from t3s_nemo.trajectory.mask_build import build_mask
    from t3s_nemo.trajectory.pipeline import MASK_CHANNEL
    from t3s_nemo.trajectory.profile import attach

    force = cfg.bottleneck.force if force is None else force
    o, b = cfg.online, cfg.bottleneck
    m = o.eval_every
    budget = check_online(cfg)
    state = load_state(root, _settings(cfg, budget))
    sft_dir = root / "sft"
    base_args = [str(root / "config.yaml")]
    step0 = sft_dir / "snapshots" / "step_0"

    def stage(title: str) -> None:
        heading(f"online: {title}")

    # ---- phase 1: SFT in chunks of m steps, evaluating at each boundary ---------------------------------
    while state["phase"] == "sft":
        current = _last_full(sft_dir)
        if current == 0 or not W.is_complete(step0):
            current = 0
        if current > 0:
            data = locate_run_data(load_config(sft_dir / "config.yaml"), sft_dir).data.path
            if state["logp0"] is None:
                stage("theta_0 log p (once) -> channel logp0")
                out = sft_dir / "profile" / "theta_0"
                launch_recipe("t3s_nemo.recipes.profile", [
                    "--data", data, "--checkpoint", str(step0), "--out", str(out),
                    "--micro-batch-size", str(cfg.profile.micro_batch_size),
                    f"parallel.tp={cfg.parallel.tp}", f"parallel.pp={cfg.parallel.pp}"], nproc)
                ds = PackedDataset(data)
                ds.add_channel("logp0", load_channel_file(out / "logp_a.npz"), dtype="float32", span="response",
                               fill=0.0, overwrite=True, info={"selector_base": str(step0), "selector_base_step": 0})
                state["logp0"] = {"file": str(out / "logp_a.npz"), "checkpoint": str(step0)}
                save_state(root, state)
            stage(f"train accuracy at step {current} ({o.num_prompts or 'all'} fixed prompts)")
            curve = run_bottleneck(sft_dir, ["bottleneck.every=1", "bottleneck.start=null", "bottleneck.end=null",
                                             f"bottleneck.num_prompts={'null' if o.num_prompts is None else o.num_prompts}"],
                                   shard=(0, 1))
            pairs = [(s, a) for s, a in zip(curve["steps"], curve["accuracy"]) if s <= current]
            steps, accuracy = [s for s, _ in pairs], [a for _, a in pairs]
            state["evaluations"] = [{"step": s, "accuracy": a} for s, a in pairs]
            det = detect(steps, accuracy, b.rule, o.patience, b.window, b.recovery, b.margin, o.force_step,
                         b.tolerance)
            if det is None and current >= budget:
                det = at_budget_end(steps, accuracy, b.rule, b.window, b.recovery, b.margin, force, sft_dir,
                                    b.tolerance)
            write_plot(sft_dir / PLOT, steps, accuracy, read_losses(sft_dir), det["step"] if det else None,
                       title=f"Online: {'theta_b = step %d' % det['step'] if det else 'no theta_b yet'}")
            console.print("accuracy " + ", ".join(f"{s}:{a:.3f}" for s, a in pairs)
                          + (f" -> theta_b = step {det['step']} ({det['reason']})" if det else ""))
            if det is not None:
                theta_b = sft_dir / "snapshots" / f"step_{det['step']}"
                det["theta_b"] = str(theta_b)
                det["current"] = str(sft_dir / "snapshots" / f"step_{det['at_step']}")
                state["detection"] = det
                state["phase"] = "profile"
                save_state(root, state)
                break
            save_state(root, state)
            _checkpoint_hook(f"sft:{current}")
        nxt = min(current + m, budget)
        stage(f"SFT steps {current} -> {nxt} of at most {budget} (online.eval_every={m})")
        launch_recipe("t3s_nemo.recipes.train", [
            "--mode", "sft", *base_args, f"run_dir={sft_dir}", f"train.steps={budget}", f"train.stop_at={nxt}",
            "mask.channel=", "mask.rule=", "resume=auto", "checkpoint.snapshot_step0=true",
            f"checkpoint.snapshot_interval={m}", f"checkpoint.save_interval={m}", "checkpoint.snapshot_keep_every=1",
            "checkpoint.snapshot_window=null", f"checkpoint.keep_last={max(cfg.checkpoint.keep_last, 1)}"], nproc)
        _write_merged_log(root, state)

    data = locate_run_data(load_config(sft_dir / "config.yaml"), sft_dir).data.path
    det = state["detection"]
    theta_b = Path(det["theta_b"])

    # ---- phase 2: log p at theta_b (theta_0's reused), delta, mask --------------------------------------
    if state["phase"] == "profile":
        stage(f"profile theta_b = step {det['step']} against theta_0, then the {cfg.pipeline.mask_rule} mask")
        out = sft_dir / "profile"
        if state["profile_b"] is None:
            launch_recipe("t3s_nemo.recipes.profile", [
                "--data", data, "--checkpoint", str(theta_b), "--out", str(out / "theta_b"),
                "--micro-batch-size", str(cfg.profile.micro_batch_size),
                f"parallel.tp={cfg.parallel.tp}", f"parallel.pp={cfg.parallel.pp}"], nproc)
            _checkpoint_hook("profile:theta_b")  # mid-profile: theta_b's log p written, nothing attached yet
            logp0 = load_channel_file(Path(state["logp0"]["file"]))
            logpb = load_channel_file(out / "theta_b" / "logp_a.npz")
            _save_npz(out / "logp_a.npz", logp0)
            _save_npz(out / "logp_b.npz", logpb)
            _save_npz(out / "delta.npz", {k: logpb[k] - logp0[k] for k in logp0})
            state["profile_b"] = {"dir": str(out), "checkpoint": str(theta_b)}
            save_state(root, state)
        ds = PackedDataset(data)
        if ds.channels.get("delta", {}).get("selector_bottleneck") != str(theta_b):
            # delta is attached last: with its selector recorded, logp0/logpb/delta are all complete
            state["profile_summary"] = attach(ds, out, step0, theta_b)
            save_state(root, state)
        _checkpoint_hook("profile:attached")
        rule = cfg.pipeline.mask_rule
        report = build_mask(PackedDataset(data), rule, MASK_CHANNEL[rule], seed=cfg.train.seed)
        # the full report (top anchor tokens...) is DATA/masks/<channel>.json; the state keeps the headline
        state["mask"] = {"rule": rule, "channel": MASK_CHANNEL[rule], "masked_fraction": report["masked_fraction"],
                         "report": str(Path(data) / "masks" / f"{MASK_CHANNEL[rule]}.json")}
        console.print(f"{rule}: {state['mask']['masked_fraction']:.1%} of response tokens masked")
        state["masked_dir"] = str(root / "t3s")
        state["phase"] = "masked"
        save_state(root, state)

    # ---- phase 3: masked training ------------------------------------------------------------------------
    masked_dir = Path(state["masked_dir"])
    init = step0 if o.restart == "theta0" else Path(det["current"])
    if state["phase"] == "masked":
        stage(f"masked training from {'theta_0' if o.restart == 'theta0' else 'the weights at detection'} "
              f"({init}) -> {masked_dir}")
        if W.is_complete(masked_dir / "checkpoints" / f"iter_{cfg.train.steps}"):
            console.print("done already")
        else:
            launch_recipe("t3s_nemo.recipes.train", [
                "--mode", "train", *base_args, f"run_dir={masked_dir}", f"data.path={data}", f"model.init={init}",
                f"mask.channel={MASK_CHANNEL[cfg.pipeline.mask_rule]}", "mask.rule=", "train.stop_at=null",
                "checkpoint.snapshot_step0=false", f"checkpoint.snapshot_interval={cfg.checkpoint.snapshot_interval}"],
                nproc)
        state["phase"] = "done"
        state["masked_init"] = str(init)
        save_state(root, state)
    _write_merged_log(root, state)
    console.print(f"online T3S done: theta_b = step {det['step']} ({det['reason']}, detected at step "
                  f"{det['at_step']}); masked run {masked_dir}; state {root / STATE}")
    return state


def _records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a crash
    return out


def _write_merged_log(root: Path, state: dict) -> None:
    """ROOT/trajectory.jsonl: the SFT phase up to detection, then the masked phase, each record tagged.

    A view rebuilt from the phases' own logs (which the train recipe writes and trims on resume), so it is
    never out of step with them after a crash. online_step counts optimizer steps over both phases.
    """
    det = state.get("detection")
    sft = [r for r in _records(root / "sft" / "trajectory.jsonl") if det is None or r["step"] <= det["at_step"]]
    lines = [json.dumps({**r, "phase": "sft", "online_step": r["step"]}) for r in sft]
    if state.get("masked_dir"):
        offset = sft[-1]["step"] if sft else 0
        for r in _records(Path(state["masked_dir"]) / "trajectory.jsonl"):
            lines.append(json.dumps({**r, "phase": "masked", "online_step": offset + r["step"]}))
    atomic_write_text(root / "trajectory.jsonl", "".join(x + "\n" for x in lines))
