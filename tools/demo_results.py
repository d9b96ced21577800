"""Run `t3s demo` for several seeds and write the measured results to docs/results/ (table, plot, JSON).

    python tools/demo_results.py --seeds 1 2 3 --out runs/demo-seeds      # resumable, ~10 min per seed on CPU

Writes docs/results/demo.json (every seed's curves, the machine, the times), docs/results/demo_accuracy.png
(train accuracy per method, mean over seeds with each seed as a thin line) and the table in
docs/results/demo_table.md, which docs/results/demo.md quotes.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"
ORDER = ("sft", "t3s", "reverse", "static-confidence", "random", "rrt")
sys.path.insert(0, str(REPO))  # bench/machine.py: what a result ran on, as every benchmark records it


def mean_sd(xs: list) -> str:
    """Mean ± standard deviation over seeds, to 3 places; None entries (not measured) are left out."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.3f}"
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--out", type=Path, default=Path("runs/demo-seeds"))
    p.add_argument("--results", type=Path, default=RESULTS)
    a = p.parse_args()
    from bench.machine import machine_info

    seeds, times = {}, {}
    for seed in a.seeds:
        run = a.out / f"seed{seed}"
        t0 = time.monotonic()
        if not (run / "curves.json").is_file():
            subprocess.run([sys.executable, "-m", "t3s_nemo.cli", "demo", "--out", str(run), "--seed", str(seed)],
                           check=True)
            times[seed] = round(time.monotonic() - t0, 1)
        seeds[seed] = json.loads((run / "curves.json").read_text())
    a.results.mkdir(parents=True, exist_ok=True)
    previous = a.results / "demo.json"
    # the largest resident set of any demo process this invocation ran (Linux reports KiB)
    peak_rss = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 2) if times else None
    if previous.is_file():  # seeds finished by an earlier invocation keep their measured time
        earlier = json.loads(previous.read_text())
        for k, v in earlier.get("seconds_per_seed", {}).items():
            times.setdefault(int(k), v)
        if peak_rss is None:
            peak_rss = earlier.get("peak_rss_gib")
    methods = [m for m in ORDER if all(m in c["runs"] for c in seeds.values())]
    rows = []
    for m in methods:
        table = [next(r for r in c["table"] if r["method"] == m) for c in seeds.values()]
        rows.append({"method": m, "min": [r["min_accuracy"] for r in table], "min_step": [r["min_step"] for r in table],
                     "final": [r["final_accuracy"] for r in table], "tokens": [r["final_mean_tokens"] for r in table]})
    theta0 = [c["theta0_accuracy"] for c in seeds.values()]
    bsteps = [c["bottleneck_step"] for c in seeds.values()]
    from t3s_nemo.trajectory.curves import LABELS

    lines = [f"Seeds {', '.join(map(str, seeds))}; theta_0 train accuracy {mean_sd(theta0)}; theta_b at steps "
             f"{', '.join(map(str, bsteps))}. Mean ± standard deviation over seeds.", "",
             "| method | lowest train accuracy (steps) | final train accuracy | tokens per answer (final) |",
             "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {LABELS.get(r['method'], r['method'])} | {mean_sd(r['min'])} ({', '.join(map(str, r['min_step']))}) "
                     f"| {mean_sd(r['final'])} | {statistics.mean(r['tokens']):.0f} |")
    anchors = {}
    for seed in seeds:
        report = json.loads((a.out / f"seed{seed}" / "pipeline.json").read_text())["masks"]["ar"]
        anchors[seed] = {"anchor_fraction": report["anchor_fraction"],
                         "top_anchor_tokens": report["top_anchor_tokens"][:15],
                         "top_yet_to_learn_tokens": report["top_yet_to_learn_tokens"][:15]}
        lines += ["", f"Seed {seed}: {report['anchor_fraction']:.1%} of response tokens are anchors (delta > 0). "
                  "Top anchors: " + ", ".join(repr(t["token"]) for t in report["top_anchor_tokens"][:12])
                  + ". Top yet-to-learn: " + ", ".join(repr(t["token"]) for t in report["top_yet_to_learn_tokens"][:12]) + "."]
    (a.results / "demo_table.md").write_text("\n".join(lines) + "\n")
    (a.results / "demo.json").write_text(json.dumps(
        {"machine": machine_info(), "seeds": list(seeds), "seconds_per_seed": times, "peak_rss_gib": peak_rss, "rows": rows, "anchors": anchors,
         "curves": {str(s): c for s, c in seeds.items()}}, indent=1) + "\n")
    plot(seeds, methods, a.results / "demo_accuracy.png")
    print("\n".join(lines))


def plot(seeds: dict, methods: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from t3s_nemo.trajectory.curves import LABELS

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    for k, m in enumerate(methods):
        color = f"C{k}"
        if m == "rrt":
            xs = [c["runs"]["rrt"]["steps"][0] for c in seeds.values()]
            ys = [c["runs"]["rrt"]["accuracy"][0] for c in seeds.values()]
            ax.plot(xs, ys, "*", ms=11, color="black", label=f"{LABELS['rrt']} (each seed)")
            continue
        curves = [c["runs"][m] for c in seeds.values()]
        for c in curves:
            ax.plot(c["steps"], c["accuracy"], color=color, lw=0.6, alpha=0.35)
        common = sorted(set.intersection(*(set(c["steps"]) for c in curves)))
        mean = [np.mean([c["accuracy"][c["steps"].index(s)] for c in curves]) for s in common]
        ax.plot(common, mean, color=color, lw=2.2 if m in ("sft", "t3s") else 1.4, marker="o", ms=3,
                ls="-" if m in ("sft", "t3s") else "--", label=LABELS.get(m, m))
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("train accuracy")
    ax.set_title(f"Demo: train accuracy per method, mean of {len(seeds)} seeds (thin: each seed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
