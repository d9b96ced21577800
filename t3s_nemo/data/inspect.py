"""`t3s data inspect`: what is in a packed dataset, and one example with its masks made visible."""

from __future__ import annotations

from typing import Optional

import numpy as np
from rich.table import Table
from rich.text import Text

from t3s_nemo.data.packed import PackedDataset
from t3s_nemo.errors import T3SError


def summary(ds: PackedDataset) -> dict:
    """Counts and per-channel statistics over response tokens."""
    lengths = ds.sequence_lengths
    resp = lengths - ds.prompt_lengths
    bins = np.diff(ds.document_indices)
    out = {
        "path": str(ds.path),
        "examples": ds.num_examples,
        "bins": ds.num_bins,
        "seq_length": ds.seq_length,
        "tokens": int(lengths.sum()),
        "response_tokens": int(resp.sum()),
        "bin_fill": float(lengths.sum()) / max(1, ds.num_bins * ds.seq_length),
        "examples_per_bin": float(bins.mean()) if len(bins) else 0.0,
        "example_tokens": {"min": int(lengths.min()), "mean": float(lengths.mean()), "max": int(lengths.max())},
        "tokenizer": ds.meta["tokenizer"]["fingerprint"],
        "channels": {},
    }
    for name, info in ds.channels.items():
        if name == "tokens":
            continue
        vals = np.concatenate([ds.read_example(i, name)[ds.response_slice(i)] for i in range(ds.num_examples)])
        stats: dict = {"dtype": info["dtype"]}
        if info["dtype"] == "uint8":
            stats["ones_fraction_of_response"] = float((vals > 0).mean()) if vals.size else 0.0
        else:
            stats.update(
                mean=float(vals.mean()), min=float(vals.min()), max=float(vals.max()),
                positive_fraction=float((vals > 0).mean()),
            )
        for k, v in info.items():
            if k != "dtype":
                stats[k] = v
        out["channels"][name] = stats
    return out


def summary_table(s: dict) -> Table:
    t = Table(title=f"packed dataset {s['path']}", show_header=False, title_justify="left")
    t.add_row("examples / bins", f"{s['examples']:,} / {s['bins']:,} ({s['examples_per_bin']:.2f} per bin)")
    t.add_row("tokens (response)", f"{s['tokens']:,} ({s['response_tokens']:,})")
    t.add_row("seq_length, bin fill", f"{s['seq_length']}, {s['bin_fill']:.1%}")
    e = s["example_tokens"]
    t.add_row("tokens per example", f"min {e['min']}, mean {e['mean']:.1f}, max {e['max']}")
    t.add_row("tokenizer", s["tokenizer"])
    for name, c in s["channels"].items():
        if c["dtype"] == "uint8":
            desc = f"uint8, {c['ones_fraction_of_response']:.1%} of response tokens are 1"
        else:
            desc = (f"float32, response mean {c['mean']:.4f} (min {c['min']:.3f}, max {c['max']:.3f}), "
                    f"{c['positive_fraction']:.1%} > 0")
        t.add_row(f"channel {name}", desc)
    return t


def render_example(ds: PackedDataset, which: Optional[str], mark: Optional[str], plain: bool = False) -> Text:
    """Decoded tokens: prompt dim, trained response tokens plain, tokens masked out by `mark` struck red.

    plain (output that is not a colour terminal, e.g. piped to less): the prompt is wrapped in
    <<prompt: ...>> and each run of masked-out tokens in [- ... -], since the styles would not show.
    """
    from t3s_nemo.data.tokenizer import load_tokenizer

    if which is None:
        i = 0
    elif which.isdigit() and which not in set(ds.ids):
        i = int(which)
        if i >= ds.num_examples:
            raise T3SError(f"--example {i}: the dataset has {ds.num_examples} examples")
    else:
        i = ds.index_of(which)
    if mark is None:
        mark = next((c for c in ("t3s_mask",) if c in ds.channels), "loss_mask")
    if mark not in ds.channels:
        raise T3SError(f"--mark {mark}: no such channel (channels: {', '.join(ds.channels)})")
    if ds.channels[mark].get("dtype") != "uint8":
        masks = [c for c, info in ds.channels.items() if info.get("dtype") == "uint8"]
        raise T3SError(f"--mark {mark}: a channel of {ds.channels[mark].get('dtype')}; --mark shows the 0s of a uint8 "
                       f"mask channel ({', '.join(masks)})")
    tok = load_tokenizer(ds.tokenizer_dir)
    tokens = ds.read_example(i)
    loss = ds.read_example(i, "loss_mask")
    extra = ds.read_example(i, mark) if mark != "loss_mask" else None
    text = Text()
    text.append(f"example {i} id={ds.ids[i]} answer={ds.answers[i]!r} ({len(tokens)} tokens)\n", style="bold")
    opening = {"dim": "<<prompt: ", "red strike": "[-"}
    closing = {"dim": ">>", "red strike": "-]"}
    previous = ""
    for t, (tid, lm) in enumerate(zip(tokens, loss)):
        piece = tok.decode([int(tid)])
        if not lm:
            style = "dim"
        elif extra is not None and not extra[t]:
            style = "red strike"
        else:
            style = ""
        if plain and style != previous:
            text.append(closing.get(previous, "") + opening.get(style, ""))
        text.append(piece, style=style)
        previous = style
    if plain:
        text.append(closing.get(previous, ""))
    legend = "<<prompt: ...>> = prompt (no loss)" if plain else "dim = prompt (no loss)"
    if extra is not None:
        legend += f", {'[- ... -]' if plain else 'red struck'} = masked out by channel '{mark}'"
    text.append(f"\n[{legend}]", style="italic")
    return text
