"""The README's figure: the error on the target after every step of the default recipe, per family at its
default target, from benchmarks/results/adapt_targets_cpu.json (``errors`` of each run).

    python benchmarks/plot_adapt_targets.py [--out docs/results/adapt_targets.png]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from matplotlib.figure import Figure  # no pyplot: nothing global is switched

from make_tables import FAMILY, RESULTS, ROOT, is_default, method_label, target_label, target_runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "adapt_targets.png"))
    args = ap.parse_args()
    data = json.loads((RESULTS / "adapt_targets_cpu.json").read_text())
    groups: dict[str, list[dict]] = {}
    for run in target_runs(data):
        if is_default(run["family"], run["coefficients"]) and run.get("errors"):
            groups.setdefault(run["family"], []).append(run)
    methods = list(dict.fromkeys(method_label(r) for runs in groups.values() for r in runs))  # one colour each
    fig = Figure(figsize=(4.2 * len(groups), 3.4), layout="constrained")
    for ax, (family, runs) in zip(fig.subplots(1, len(groups), squeeze=False)[0], groups.items()):
        for run in runs:
            steps, errors = zip(*run["errors"])
            label = method_label(run)
            ax.semilogy(steps, errors, marker=".", color=f"C{methods.index(label) % 10}", label=label.replace("`", ""))
        ax.axhline(runs[0]["base_error"], color="grey", ls="--", lw=1, label="base model")
        ax.set_title(target_label(family, runs[0]["coefficients"]))
        ax.set_xlabel("step (intermediate stages, then the target)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.axes[0].set_ylabel("relative L2 error on the target")
    fig.suptitle(f"Default recipe ({', '.join(FAMILY.get(f, f) for f in groups)}), seed 0: "
                 "benchmarks/results/adapt_targets_cpu.json", fontsize=9)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
