"""`t3s data mix`: merge the packed datasets of several teachers, each with its own T3S mask.

T3S is applied per teacher (each teacher's traces get their own trajectory, bottleneck and mask); the
debiased sets are then mixed here into one packed dataset. Every selected example is copied whole:
its tokens, loss_mask and mask channel are the source example's, bit for bit. Only the bins change
(first-fit-decreasing over the selected examples).

Selection:
    ratios      {teacher: share of the output}. The output is the largest set that honours the shares
                (or `num_examples` of them): counts are num * share rounded by largest remainder, each
                drawn from that teacher without replacement.
    per_prompt  'random': one trace per distinct prompt: a teacher picked at random among those that
                have the prompt, then one of that teacher's traces of it. 'all': every trace.
A prompt is its token ids, tokens[:prompt_length] (meta.json stores no prompt text).
"""

from __future__ import annotations

import hashlib
import math
import re
import shutil
import time
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

import t3s_nemo
from t3s_nemo.console import progress
from t3s_nemo.data import indexed
from t3s_nemo.data.pack import first_fit_decreasing
from t3s_nemo.data.packed import DTYPES, FORMAT, FORMAT_VERSION, RESERVED, PackedDataset, channel_prefix
from t3s_nemo.errors import T3SError
from t3s_nemo.io import atomic_write_json, staged_dir

PER_PROMPT = ("random", "all")
_TEACHER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


# ---- CLI argument parsing ----------------------------------------------------------------------
def _split(item: str, flag: str, example: str) -> tuple[str, str]:
    name, sep, value = str(item).partition("=")
    name = name.strip()
    if not sep or not name or not value:
        raise T3SError(f"{flag} '{item}': expected NAME=VALUE, e.g. {flag} {example}")
    return name, value


def parse_inputs(items: Iterable[str]) -> list[tuple[str, Path]]:
    """['r1=DIR', 'qwq=DIR'] -> [('r1', Path(DIR)), ...] (the order is kept)."""
    return [(n, Path(v)) for n, v in (_split(i, "--input", "r1=packed/r1") for i in items)]


def parse_ratios(items: Iterable[str]) -> dict[str, float]:
    """['r1=0.5', 'qwq=0.5'] -> {'r1': 0.5, 'qwq': 0.5}."""
    out: dict[str, float] = {}
    for item in items:
        name, value = _split(item, "--ratio", "r1=0.5")
        if name in out:
            raise T3SError(f"--ratio '{item}': teacher '{name}' is given twice")
        try:
            out[name] = float(value)
        except ValueError:
            raise T3SError(f"--ratio '{item}': '{value}' is not a number") from None
    return out


# ---- selection ---------------------------------------------------------------------------------
def ratio_counts(available: dict[str, int], ratios: dict[str, float], total: Optional[int] = None) -> dict[str, int]:
    """Examples to draw per teacher: `total` (default: the most the inputs allow) split by the normalised
    ratios, rounded by largest remainder (ties go to the teacher listed first). Exact arithmetic on the
    ratios as written (0.1 is 1/10, not the binary float nearest to it)."""
    weights = {t: Fraction(repr(float(ratios[t]))) for t in available}
    weight = sum(weights.values())
    shares = {t: w / weight for t, w in weights.items()}
    most = min(math.floor(available[t] / s) for t, s in shares.items() if s > 0)
    if total is None:
        total = most
    elif total > most:
        need = ", ".join(f"{t} {math.ceil(total * s)} of {available[t]}" for t, s in shares.items() if s > 0)
        raise T3SError(f"--num-examples {total}: the ratios need more examples than the inputs have ({need}); "
                       f"at most {most}")
    exact = {t: total * s for t, s in shares.items()}
    counts = {t: math.floor(x) for t, x in exact.items()}
    rest = total - sum(counts.values())  # 0 <= rest < number of teachers
    order = sorted(available, key=lambda t: -(exact[t] - counts[t]))  # stable: input order on ties
    for t in order[:rest]:
        counts[t] += 1  # ceil(total * share) <= available, since total * share <= available
    return counts


def _prompt_key(ds: PackedDataset, i: int) -> bytes:
    prompt = np.ascontiguousarray(ds.read_example(i)[: int(ds.prompt_lengths[i])], dtype=np.int32)
    return hashlib.blake2b(prompt.tobytes(), digest_size=16).digest()


def _group_by_prompt(sets: list[tuple[str, PackedDataset]]) -> dict[bytes, dict[int, list[int]]]:
    """prompt key -> {input index: [example indices]}, prompts in order of first appearance."""
    groups: dict[bytes, dict[int, list[int]]] = {}
    for k, (_, ds) in enumerate(sets):
        for i in range(ds.num_examples):
            groups.setdefault(_prompt_key(ds, i), {}).setdefault(k, []).append(i)
    return groups


# ---- mix ---------------------------------------------------------------------------------------
def _open_inputs(inputs, mask_channel, channels) -> list[tuple[str, PackedDataset]]:
    if not inputs:
        raise T3SError("mix: give at least one --input NAME=DIR")
    sets: list[tuple[str, PackedDataset]] = []
    for teacher, path in inputs:
        if not _TEACHER.match(teacher):
            raise T3SError(f"--input '{teacher}={path}': teacher name '{teacher}': use letters, digits, '_', '.' "
                           "and '-' (it prefixes the example ids as NAME/ID)")
        if any(teacher == t for t, _ in sets):
            raise T3SError(f"--input '{teacher}={path}': teacher '{teacher}' is given twice")
        try:
            ds = PackedDataset(path)
        except T3SError as e:
            raise T3SError(f"input '{teacher}': {e}") from None
        where = f"input '{teacher}' ({path})"
        if sets and ds.fingerprint != sets[0][1].fingerprint:
            t0, ds0 = sets[0]
            raise T3SError(
                f"{where}: tokenizer fingerprint {ds.fingerprint} differs from input '{t0}' ({ds0.fingerprint}); "
                "mix only datasets packed with the same tokenizer"
            )
        for name in ([mask_channel] if mask_channel else []) + list(channels):
            if name not in ds.channels:
                have = ", ".join(ds.channels)
                hint = ""
                if name == mask_channel:
                    hint = " (build it with `t3s mask` on this teacher's run, or pass --mask-channel)"
                raise T3SError(f"{where}: no channel '{name}' (it has {have}){hint}")
            if sets and ds.channels[name]["dtype"] != sets[0][1].channels[name]["dtype"]:
                raise T3SError(f"{where}: channel '{name}' is {ds.channels[name]['dtype']}, but "
                               f"{sets[0][1].channels[name]['dtype']} in input '{sets[0][0]}'")
        if mask_channel and ds.channels[mask_channel]["dtype"] != "uint8":
            raise T3SError(f"{where}: mask channel '{mask_channel}' is {ds.channels[mask_channel]['dtype']}, "
                           "expected uint8 (1 = train on the token)")
        sets.append((teacher, ds))
    return sets


def _select(sets, ratios, per_prompt, seed, num_examples) -> tuple[list[tuple[int, int]], dict]:
    """(input index, example index) pairs to keep, sorted; and selection facts for meta/summary."""
    rng = np.random.default_rng(seed)
    teachers = [t for t, _ in sets]
    available = {t: ds.num_examples for t, ds in sets}
    info: dict = {}
    if ratios is not None:
        unknown = [t for t in ratios if t not in available]
        if unknown:
            raise T3SError(f"--ratio {unknown[0]}=...: no --input named '{unknown[0]}' (inputs: {', '.join(teachers)})")
        missing = [t for t in teachers if t not in ratios]
        if missing:
            raise T3SError(f"no --ratio for input '{missing[0]}' (give one for every input; 0 leaves an input out)")
        for t, r in ratios.items():
            if not math.isfinite(r) or r < 0:
                raise T3SError(f"--ratio {t}={r}: a ratio must be a finite number >= 0")
        if sum(ratios.values()) <= 0:
            raise T3SError("--ratio: at least one ratio must be positive")
        counts = ratio_counts(available, {t: float(ratios[t]) for t in teachers}, num_examples)
        chosen = []
        for k, t in enumerate(teachers):
            pick = rng.choice(available[t], size=counts[t], replace=False) if counts[t] else []
            chosen += [(k, int(i)) for i in pick]
        return sorted(chosen), info
    groups = _group_by_prompt(sets)
    info["prompts"] = len(groups)
    info["shared_prompts"] = sum(1 for g in groups.values() if len(g) > 1)
    if per_prompt == "all":
        chosen = [(k, i) for k, (_, ds) in enumerate(sets) for i in range(ds.num_examples)]
    else:
        chosen = []
        for g in groups.values():
            ks = sorted(g)
            k = ks[int(rng.integers(len(ks)))] if len(ks) > 1 else ks[0]
            traces = g[k]
            chosen.append((k, traces[int(rng.integers(len(traces)))] if len(traces) > 1 else traces[0]))
    if num_examples is not None:
        if num_examples > len(chosen):
            raise T3SError(f"--num-examples {num_examples}: per-prompt {per_prompt} selects only {len(chosen)}")
        chosen = [chosen[j] for j in rng.choice(len(chosen), size=num_examples, replace=False)]
    return sorted(chosen), info


def mix(
    inputs: Sequence[tuple[str, str | Path]],
    output: str | Path,
    *,
    ratios: Optional[dict[str, float]] = None,
    per_prompt: Optional[str] = None,
    mask_channel: Optional[str] = "t3s_mask",
    seed: int = 0,
    seq_length: Optional[int] = None,
    overwrite: bool = False,
    channels: Sequence[str] = (),
    num_examples: Optional[int] = None,
) -> dict:
    """Mix the packed datasets of several teachers into one packed dataset at `output` (atomically).

    inputs: (teacher name, packed dataset dir) pairs. Give `ratios` or `per_prompt` ('random' | 'all');
    with neither, every example is kept ('all'). The output carries tokens, loss_mask, `mask_channel`
    (None: no mask) and the extra `channels`, all copied per example; ids become '<teacher>/<id>'.
    Returns a summary dict (counts per teacher, bins, tokens, ...).
    """
    t0 = time.time()
    output = Path(output)
    if ratios is not None and per_prompt is not None:
        raise T3SError("give --ratio or --per-prompt, not both")
    if ratios is None and per_prompt is None:
        per_prompt = "all"
    if per_prompt is not None and per_prompt not in PER_PROMPT:
        raise T3SError(f"--per-prompt '{per_prompt}': expected random or all")
    if num_examples is not None and num_examples < 1:
        raise T3SError(f"--num-examples {num_examples}: must be at least 1")
    if mask_channel in RESERVED:
        raise T3SError(f"--mask-channel '{mask_channel}': tokens and loss_mask are always carried; name the T3S "
                       "mask channel (or '' for none)")
    channels = [c for c in dict.fromkeys(channels) if c not in RESERVED and c != mask_channel]
    sets = _open_inputs([(t, Path(p)) for t, p in inputs], mask_channel, channels)
    for t, ds in sets:
        if output.resolve() == ds.path.resolve():
            raise T3SError(f"--output {output} is input '{t}'; write the mix to a new directory")
    if output.exists() and not overwrite:  # before the (possibly long) selection; staged_dir checks again
        raise T3SError(f"{output}: output directory exists (pass --overwrite to replace it)")

    if seq_length is None:
        lengths = {ds.seq_length for _, ds in sets}
        if len(lengths) > 1:
            got = ", ".join(f"{t}: {ds.seq_length}" for t, ds in sets)
            raise T3SError(f"the inputs' seq_length differ ({got}); pass --seq-length for the mix")
        seq_length = lengths.pop()
    if seq_length < 2:
        raise T3SError(f"--seq-length must be at least 2, got {seq_length}")

    chosen, sel_info = _select(sets, ratios, per_prompt, seed, num_examples)
    if not chosen:
        raise T3SError("the selection is empty: no examples to write")
    lengths_np = np.asarray([sets[k][1].sequence_lengths[i] for k, i in chosen], dtype=np.int64)
    if lengths_np.max() > seq_length:
        j = int(np.argmax(lengths_np))
        t, ds = sets[chosen[j][0]]
        raise T3SError(f"input '{t}': example '{ds.ids[chosen[j][1]]}' has {lengths_np[j]} tokens, more than "
                       f"--seq-length {seq_length}")
    bins = first_fit_decreasing(lengths_np, seq_length)
    order = [chosen[j] for b in bins for j in b]
    names = ["tokens", "loss_mask"] + ([mask_channel] if mask_channel else []) + channels
    dtypes = {n: sets[0][1].channels[n]["dtype"] for n in names}

    teachers = [t for t, _ in sets]
    counts = {t: 0 for t in teachers}
    for k, _ in order:
        counts[teachers[k]] += 1
    first = sets[0][1]
    common_cols = [c for c in first.meta["examples"] if all(c in ds.meta["examples"] for _, ds in sets)]
    examples: dict[str, list] = {c: [] for c in common_cols if c not in ("teacher", "source_id")}
    examples["teacher"], examples["source_id"] = [], []
    for k, i in order:
        t, ds = sets[k]
        for c in examples:
            if c not in ("id", "teacher", "source_id"):
                examples[c].append(ds.meta["examples"][c][i])
        examples["id"].append(f"{t}/{ds.ids[i]}")
        examples["teacher"].append(t)
        examples["source_id"].append(ds.ids[i])
    resp = sum(int(sets[k][1].sequence_lengths[i] - sets[k][1].prompt_lengths[i]) for k, i in order)
    templates = {ds.meta.get("template") for _, ds in sets}
    mix_info = {
        "inputs": [
            {"teacher": t, "path": str(ds.path.resolve()), "num_examples": ds.num_examples, "seq_length": ds.seq_length,
             "template": ds.meta.get("template"), "source": ds.meta.get("source"),
             "dropped_overflow": ds.meta.get("dropped_overflow", 0), "truncated": ds.meta.get("truncated", 0),
             "meta_sha256": hashlib.sha256((ds.path / "meta.json").read_bytes()).hexdigest()[:32]}
            for t, ds in sets
        ],
        "ratios": dict(ratios) if ratios is not None else None,
        "per_prompt": per_prompt,
        "seed": seed,
        "requested_examples": num_examples,
        "mask_channel": mask_channel or None,
        "counts": counts,
        **sel_info,
    }
    h = hashlib.sha256()
    for entry in mix_info["inputs"]:
        h.update(f"{entry['teacher']}\0{entry['meta_sha256']}\0".encode())
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_by": f"t3s-nemo {t3s_nemo.__version__}",
        "seq_length": int(seq_length),
        "template": templates.pop() if len(templates) == 1 else "mixed",
        "tokenizer": dict(first.meta["tokenizer"]),
        "source": {"inputs": [str(ds.path.resolve()) for _, ds in sets], "hash": "sha256:" + h.hexdigest()[:32]},
        "num_examples": len(order),
        "num_bins": len(bins),
        "num_tokens": int(lengths_np.sum()),
        "response_tokens": resp,
        "dropped_overflow": 0,
        "truncated": 0,
        "channels": {n: _channel_entry(n, dtypes[n], sets) for n in names},
        "mix": mix_info,
        "examples": examples,
    }

    with staged_dir(output, overwrite=overwrite, inputs=[ds.path for _, ds in sets]) as tmp:
        _write(tmp, sets, bins, chosen, names, dtypes)
        if first.tokenizer_dir.is_dir():
            shutil.copytree(first.tokenizer_dir, tmp / "tokenizer")
        atomic_write_json(tmp / "meta.json", meta, indent=None)
        PackedDataset(tmp)  # the layout checks of every reader, before the output appears

    return {
        "output": str(output),
        "num_examples": len(order),
        "num_bins": len(bins),
        "num_tokens": int(lengths_np.sum()),
        "response_tokens": resp,
        "fill": float(lengths_np.sum()) / (len(bins) * seq_length),
        "counts": counts,
        "available": {t: ds.num_examples for t, ds in sets},
        "seq_length": int(seq_length),
        "channels": names,
        "seconds": time.time() - t0,
        **sel_info,
    }


def _channel_entry(name: str, dtype: str, sets) -> dict:
    entry: dict = {"dtype": dtype}
    if name not in RESERVED:
        entry["inputs"] = {t: {k: v for k, v in ds.channels[name].items() if k != "dtype"} for t, ds in sets}
    return entry


def _write(out_dir: Path, sets, bins, chosen, names, dtypes) -> None:
    builders = {n: indexed.IndexedWriter(channel_prefix(out_dir, n), DTYPES[dtypes[n]]) for n in names}
    with progress() as bar:
        task = bar.add_task("mixing", total=len(bins))
        for b in bins:
            parts = {n: [sets[chosen[j][0]][1].read_example(chosen[j][1], n) for j in b] for n in names}
            lens = [len(p) for p in parts["tokens"]]
            for n in names:
                builders[n].add_document(np.concatenate(parts[n]), lens)
            bar.advance(task)
    for n in names:
        builders[n].finalize()
