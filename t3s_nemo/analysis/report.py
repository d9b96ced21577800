"""Static HTML and PNG reports a person can read: where the anchors are, inside real examples."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from t3s_nemo.io import atomic_write_text

_STYLE = """body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;color:#222}
.ex{white-space:pre-wrap;font-family:ui-monospace,monospace;border:1px solid #ddd;padding:.8em;margin:1em 0}
.a{background:#f8c4c4}.y{background:#c4e8c4}.p{color:#999}table{border-collapse:collapse}
td,th{border:1px solid #ddd;padding:.2em .6em;text-align:left}"""


def write_mask_report(ds, delta: list[np.ndarray], keep: list[np.ndarray], report: dict, html_path: Path,
                      png_path: Path, tau: float, examples: int = 5) -> None:
    """masks/<channel>.html (top tokens, highlighted examples) and .png (delta histogram, mask by position)."""
    from t3s_nemo.data.tokenizer import load_tokenizer

    tok = load_tokenizer(ds.tokenizer_dir)
    rows = lambda key: "".join(
        f"<tr><td>{html.escape(repr(t['token']))}</td><td>{t['count']}</td></tr>" for t in report[key][:20])
    parts = [f"<!doctype html><meta charset=utf-8><title>{html.escape(report['channel'])}</title><style>{_STYLE}</style>",
             f"<h1>Mask <code>{html.escape(report['channel'])}</code> (rule {html.escape(report['rule'])})</h1>",
             f"<p>{report['response_tokens']:,} response tokens; anchors (delta &gt; 0): "
             f"{report['anchor_fraction']:.1%}; mean delta {report['mean_delta']:.4f}.</p>",
             f"<p><span class=a>red</span> = imitation anchor (confidence rose by theta_b); "
             f"<span class=y>green</span> = yet-to-learn (delta &lt; -{tau}); grey = prompt.</p>",
             f"<img src='{png_path.name}' alt='delta histogram and masked fraction by position'>",
             "<table><tr><th>top anchors</th><th>count</th></tr>" + rows("top_anchor_tokens") + "</table>",
             "<h2>Examples</h2>"]
    for i in range(min(examples, ds.num_examples)):
        ids = ds.read_example(i)
        p = int(ds.prompt_lengths[i])
        spans = [f"<span class=p>{html.escape(tok.decode(ids[:p]))}</span>"]
        for t, d in zip(ids[p:], delta[i]):
            cls = "a" if d > 0 else ("y" if d < -tau else "")
            text = html.escape(tok.decode([int(t)]))
            spans.append(f"<span class={cls} title='delta {d:.3f}'>{text}</span>" if cls else text)
        parts.append(f"<h3>{html.escape(ds.ids[i])}</h3><div class=ex>{''.join(spans)}</div>")
    atomic_write_text(html_path, "\n".join(parts))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    flat = np.concatenate(delta) if delta else np.zeros(1)
    a.hist(flat, bins=60, color="#888")
    a.axvline(0, color="red", lw=1)
    a.axvline(-tau, color="green", lw=1, ls="--")
    a.set_xlabel("delta log p (theta_b - theta_0)")
    a.set_ylabel("response tokens")
    b.bar(np.arange(10) / 10 + 0.05, report["masked_fraction_by_position"], width=0.09)
    b.set_xlabel("position in response")
    b.set_ylabel("masked fraction" if report["rule"] != "dllm" else "non-target fraction")
    fig.tight_layout()
    tmp = png_path.with_name(f".{png_path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(png_path)


def write_run_report(root: Path, summary: dict, bottleneck: dict) -> Path:
    """ROOT/report.html: theta_b and the accuracy curve, the mask reports, and every run's final loss."""
    import json
    import os

    def final_loss(run_dir: str) -> str:
        path = Path(run_dir) / "trajectory.jsonl"
        if not path.is_file():
            return "-"
        lines = path.read_text(encoding="utf-8").splitlines()
        return f"{json.loads(lines[-1])['loss']:.4f}" if lines else "-"

    rel = lambda p: html.escape(os.path.relpath(p, root))
    sft = Path(summary["runs"]["sft"])
    rows = "".join(f"<tr><td>{html.escape(name)}</td><td>{rel(path)}</td><td>{final_loss(path)}</td></tr>"
                   for name, path in summary["runs"].items())
    masks_dir = Path(summary["data"]) / "masks"
    mask_rows = "".join(
        f"<tr><td><a href='{rel(masks_dir / (r['channel'] + '.html'))}'>{html.escape(r['channel'])}</a></td>"
        f"<td>{html.escape(rule)}</td><td>{r.get('masked_fraction', r.get('target_fraction', 0)):.1%}</td></tr>"
        for rule, r in summary["masks"].items())
    def loss_cell(snap: dict) -> str:
        return "" if snap.get("loss") is None else f"{snap['loss']:.4f}"

    curve = "".join(f"<tr><td>{snap['step']}</td><td>{snap['accuracy']:.3f}</td><td>{loss_cell(snap)}</td></tr>"
                    for snap in bottleneck.get("snapshots", []))
    page = f"""<!doctype html><meta charset=utf-8><title>T3S run {html.escape(str(root))}</title><style>{_STYLE}</style>
<h1>T3S run</h1>
<p>Imitation Bottleneck theta_b = step {bottleneck['bottleneck_step']} (rule {html.escape(str(bottleneck.get('rule')))});
training accuracy {bottleneck.get('base_accuracy', 0):.1%} at theta_0, {bottleneck.get('min_accuracy', 0):.1%} at theta_b.
{'<b>No Imitation Shock was found; theta_b was forced.</b>' if bottleneck.get('no_dip') else ''}</p>
<img src='{rel(sft / "accuracy.png")}' alt='training accuracy and loss per snapshot'>
<h2>Accuracy per snapshot</h2><table><tr><th>step</th><th>accuracy</th><th>loss</th></tr>{curve}</table>
<h2>Masks</h2><table><tr><th>channel</th><th>rule</th><th>masked</th></tr>{mask_rows}</table>
<h2>Runs</h2><table><tr><th>run</th><th>directory</th><th>final loss</th></tr>{rows}</table>
"""
    out = root / "report.html"
    atomic_write_text(out, page)
    return out
