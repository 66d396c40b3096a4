"""Compact tables of the study (issue 4) from its run directories.

    python benchmarks/study_tables.py STUDY_DIR OUT_DIR

Reads every ``summary.json`` under STUDY_DIR/main and STUDY_DIR/lr (the layout
``benchmarks/study.sh`` writes) and writes into OUT_DIR:

- ``runs.csv``: one line per run (problem, method, scheme, lr, seed, error, status, stability);
- ``tables.md``: the median error over seeds per method and problem with its spread, spikes and
  oscillation; the learning-rate window per method and problem (final error per lr, ``div`` for
  a diverged run, ``>base`` for one that ended worse than the base model) with the count of
  divergent learning rates.
"""
from __future__ import annotations

import csv
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

PROBLEMS = ["burgers", "allen_cahn", "helmholtz"]


def load(root: Path) -> list[dict]:
    rows = []
    for path in sorted(root.rglob("summary.json")):
        s = json.loads(path.read_text())
        m = s["method"]
        label = m["name"] + (f"-{m['scheme']}" if m["name"] == "odelora" else "")
        st = s.get("stability") or {}
        rows.append({"problem": s["problem"], "method": m["name"], "label": label, "lr": m.get("lr"),
                     "precondition": m.get("precondition", ""), "seed": s.get("seed"),
                     "trainable": s["trainable_parameters"], "steps": s["steps"], "evaluations": s["evaluations"],
                     "wall_time_s": s["wall_time_s"], "base_error": s["base_error"],
                     "error": s["adapted_error"], "status": s["status"], "spikes": st.get("spikes"),
                     "oscillation": st.get("oscillation"), "dir": str(path.parent)})
    return rows


def fmt(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.2e}"


def main_table(rows: list[dict]) -> list[str]:
    by = defaultdict(list)
    for r in rows:
        by[(r["label"], r["problem"])].append(r)
    labels = sorted({r["label"] for r in rows}, key=lambda m: (m not in ("scratch", "full"), m))
    out = ["| method | " + " | ".join(f"{p}: median [min – max] (n)" for p in PROBLEMS)
           + " | spikes (all runs) | oscillation (median) |", "|---|" + "---|" * (len(PROBLEMS) + 2)]
    for lab in labels:
        cells, spikes, osc = [], 0, []
        for p in PROBLEMS:
            rs = by.get((lab, p), [])
            errs = [r["error"] for r in rs]
            if not errs:
                cells.append("—")
                continue
            div = sum(r["status"] != "completed" for r in rs)
            cells.append(f"{fmt(statistics.median(errs))} [{fmt(min(errs))} – {fmt(max(errs))}] ({len(errs)})"
                         + (f", {div} diverged" if div else ""))
            spikes += sum(r["spikes"] or 0 for r in rs)
            osc += [r["oscillation"] for r in rs if r["oscillation"] is not None]
        out.append(f"| `{lab}` | " + " | ".join(cells) + f" | {spikes} | "
                   + (f"{statistics.median(osc):.3f}" if osc else "—") + " |")
    return out


def lr_table(rows: list[dict]) -> list[str]:
    lrs = sorted({r["lr"] for r in rows})
    out = []
    for p in PROBLEMS:
        rs = [r for r in rows if r["problem"] == p]
        if not rs:
            continue
        out += [f"**{p}** (base error {fmt(rs[0]['base_error'])})", "",
                "| method | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | divergent lrs | worse than base |",
                "|---|" + "---|" * (len(lrs) + 2)]
        for lab in sorted({r["label"] for r in rs}):
            cells, div, worse = [], 0, 0
            for lr in lrs:
                hit = [r for r in rs if r["label"] == lab and r["lr"] == lr]
                if not hit:
                    cells.append("—")
                    continue
                r = hit[0]
                if r["status"] != "completed" or not math.isfinite(r["error"]):
                    div += 1
                    cells.append(f"div ({fmt(r['error'])})")
                else:
                    bad = r["error"] > r["base_error"]
                    worse += bad
                    cells.append(fmt(r["error"]) + (" >base" if bad else ""))
            out.append(f"| `{lab}` | " + " | ".join(cells) + f" | {div} | {worse} |")
        out.append("")
    return out


def main() -> None:
    study, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    main_rows, lr_rows = load(study / "main"), load(study / "lr")
    with open(out / "runs.csv", "w", newline="") as fh:
        keys = [k for k in (main_rows or lr_rows)[0] if k != "dir"]
        w = csv.DictWriter(fh, fieldnames=["sweep", *keys])
        w.writeheader()
        for sweep, rows in (("main", main_rows), ("lr", lr_rows)):
            for r in rows:
                w.writerow({"sweep": sweep, **{k: r[k] for k in keys}})
    lines = ["## Every method, three seeds", "", *main_table(main_rows), "", "## Learning-rate windows (seed 0)", "",
             *lr_table(lr_rows)]
    (out / "tables.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
