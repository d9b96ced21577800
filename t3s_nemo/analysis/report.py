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
