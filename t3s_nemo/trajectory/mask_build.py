"""`t3s mask`: a uint8 mask channel (1 = train on the token) from the profile channels, and a report.

Rules on delta = log p(theta_b) - log p(theta_0) per response token:
    ar                 T3S: drop imitation anchors (delta > 0)
    reverse            -T3S diagnostic: train on the anchors only
    static-confidence  baseline: drop the same fraction of tokens as `ar`, chosen by theta_0 log p
                       (most confident first) -- a mask that ignores the trajectory
    static-confidence-low  the same, least confident first
    random             baseline: drop the same fraction uniformly at random (seeded)
    dllm               diffusion-LLM targets: 1 on yet-to-learn tokens (delta < -tau), which the dLLM
                       objective always noises (a target set, not a loss mask)
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np

from t3s_nemo.data.packed import PackedDataset
from t3s_nemo.errors import T3SError
from t3s_nemo.io import atomic_write_json
from t3s_nemo.trajectory.masks import anchor_mask, dllm_targets, reverse_mask

RULES = ("ar", "reverse", "static-confidence", "static-confidence-low", "random", "dllm")
# channels a mask must never replace: what every dataset holds and what the masks are made from
PROTECTED = ("tokens", "loss_mask", "delta", "logp0", "logpb")


def _response(ds: PackedDataset, name: str) -> list[np.ndarray]:
    if name not in ds.channels:
        raise T3SError(f"{ds.path}: no '{name}' channel (run `t3s profile` first)")
    return [ds.read_example(i, name)[ds.response_slice(i)] for i in range(ds.num_examples)]


def _same_fraction(scores: list[np.ndarray], fraction: float) -> list[np.ndarray]:
    """Keep-masks dropping the `fraction` of all tokens with the highest score."""
    flat = np.concatenate(scores) if scores else np.zeros(0)
    k = int(round(fraction * len(flat)))
    drop = np.zeros(len(flat), dtype=bool)
    if k:
        drop[np.argsort(-flat, kind="stable")[:k]] = True
    out, off = [], 0
    for s in scores:
        out.append((~drop[off : off + len(s)]).astype(np.uint8))
        off += len(s)
    return out


def check_rule(rule: str) -> None:
    if rule not in RULES:
        raise T3SError(f"unknown mask rule '{rule}' (one of {', '.join(RULES)})")


def channel_name(rule: str, name: Optional[str] = None) -> str:
    """The channel a rule writes: t3s_mask for ar, mask_<rule> for the others, unless named."""
    return name or ("t3s_mask" if rule == "ar" else "mask_" + rule.replace("-", "_"))


def build_mask(ds: PackedDataset, rule: str, name: Optional[str] = None, seed: int = 0, overwrite: bool = True,
               top_k: int = 30, tau: float = 0.2) -> dict:
    """Write the mask channel for `rule` and return its report (also saved as DIR/masks/<name>.json)."""
    check_rule(rule)
    name = channel_name(rule, name)
    if not (np.isfinite(tau) and tau >= 0):
        raise T3SError(f"--tau {tau}: must be a finite number >= 0 (dllm targets are tokens with delta < -tau)")
    held = ds.channels.get(name)
    if name in PROTECTED or (held is not None and held.get("dtype") != "uint8"):
        raise T3SError(f"--name {name}: the dataset's {name} channel is not a mask ("
                       f"{'an input of every mask' if name in PROTECTED else held.get('dtype')}); "
                       "name the mask channel otherwise")
    delta = _response(ds, "delta")
    anchors = [anchor_mask(d) for d in delta]
    anchor_fraction = 1 - float(np.concatenate(anchors).mean()) if anchors else 0.0
    if rule == "ar":
        keep = anchors
    elif rule == "reverse":
        keep = [reverse_mask(d) for d in delta]
    elif rule == "static-confidence":
        keep = _same_fraction(_response(ds, "logp0"), anchor_fraction)
    elif rule == "static-confidence-low":
        keep = _same_fraction([-x for x in _response(ds, "logp0")], anchor_fraction)
    elif rule == "dllm":
        keep = [dllm_targets(d, tau) for d in delta]
    else:
        rng = np.random.default_rng(seed)
        keep = _same_fraction([rng.random(len(d)) for d in delta], anchor_fraction)
    report = _report(ds, rule, name, delta, keep, anchor_fraction, top_k)  # loads the tokenizer: before writing
    if rule == "dllm":
        report["target_fraction"] = report.pop("trained_tokens") / max(1, report["response_tokens"])
        report.pop("masked_fraction")
    masks_dir = Path(ds.path) / "masks"
    if masks_dir.exists() and not masks_dir.is_dir():
        raise T3SError(f"{masks_dir}: a file where the mask reports go; move it away")
    ds.add_channel(name, {ds.ids[i]: keep[i] for i in range(ds.num_examples)}, dtype="uint8", span="response",
                   fill=0, overwrite=overwrite, info={"rule": rule, "seed": seed, "tau": tau})
    atomic_write_json(masks_dir / f"{name}.json", report)
    from t3s_nemo.analysis.report import write_mask_report

    write_mask_report(ds, delta, keep, report, masks_dir / f"{name}.html", masks_dir / f"{name}.png", tau)
    return report


def _report(ds, rule, name, delta, keep, anchor_fraction, top_k) -> dict:
    from t3s_nemo.data.tokenizer import load_tokenizer

    tok = load_tokenizer(ds.tokenizer_dir)
    anchor_counts: Counter = Counter()
    learn_counts: Counter = Counter()
    target_counts: Counter = Counter()
    for i, d in enumerate(delta):
        ids = ds.read_example(i)[ds.response_slice(i)]
        anchor_counts.update(ids[d > 0].tolist())
        learn_counts.update(ids[d <= 0].tolist())  # not anchors: every token whose confidence did not rise
        if rule == "dllm":  # the channel's 1s: delta < -tau, a subset of those
            target_counts.update(ids[keep[i].astype(bool)].tolist())
    total = sum(len(k) for k in keep)
    trained = int(sum(int(k.sum()) for k in keep))

    def top(c: Counter):
        return [{"token": tok.decode([t]), "id": int(t), "count": n} for t, n in c.most_common(top_k)]

    # masked fraction by position in the response, in tenths (anchors cluster where the style lives)
    by_pos = np.zeros(10)
    counts = np.zeros(10)
    for k in keep:
        if len(k):
            bins = np.minimum((np.arange(len(k)) * 10) // len(k), 9)
            np.add.at(by_pos, bins, 1 - k)
            np.add.at(counts, bins, 1)
    extra = {"top_target_tokens": top(target_counts)} if rule == "dllm" else {}
    return {
        "rule": rule,
        "masked_fraction_by_position": [float(x) for x in by_pos / np.maximum(counts, 1)],
        "channel": name,
        "response_tokens": total,
        "trained_tokens": trained,
        "masked_fraction": 1 - trained / total if total else 0.0,
        "anchor_fraction": anchor_fraction,
        "mean_delta": float(np.concatenate(delta).mean()) if delta else 0.0,
        "top_anchor_tokens": top(anchor_counts),
        "top_yet_to_learn_tokens": top(learn_counts),
        **extra,
    }
