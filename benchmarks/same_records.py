"""Same arithmetic, same records: five short runs (each family's default recipe with few steps, the full
Helmholtz default run, and two first-order runs) whose every ``metrics.jsonl`` record but ``time`` is compared
with the same runs of another checkout of the package, bit for bit.

    python benchmarks/same_records.py --write A.json          # in the checkout under test
    python benchmarks/same_records.py --compare A.json B.json --out benchmarks/results/same_records_cpu.json

Run the first command in each checkout (the other checkout on ``PYTHONPATH``, outside an editable install of
this one), then compare. A refactor that keeps the order of floating-point operations keeps every record."""
from __future__ import annotations

import argparse
import json
import os
import time

RUNS = [("burgers", "odelora", {"steps": 3, "n_points": 400}), ("allen_cahn", "lora", {"steps": 3, "n_points": 400}),
        ("helmholtz", "odelora", {}), ("burgers", "lora", {"steps": 4, "n_points": 300, "solver": "method"}),
        ("helmholtz", "odelora", {"steps": 5, "n_points": 300, "solver": "method"})]


def write(path: str) -> None:
    import torch

    import pinn_lora

    torch.set_num_threads(1)
    out = {"package": pinn_lora.__file__, "runs": {}}
    for fam, method, kw in RUNS:
        res = pinn_lora.adapt_to(fam, pinn_lora.get_problem(fam).default_target(), method, progress=False,
                                 plots=False, device="cpu", **kw)
        out["runs"][f"{fam}/{method}/{json.dumps(kw, sort_keys=True)}"] = {
            "error": res.error, "validation": res.validation,
            "records": [{k: v for k, v in r.items() if k != "time"} for r in res.metrics]}
    with open(path, "w") as fh:
        json.dump(out, fh, default=str)


def compare(a_path: str, b_path: str, out: str | None) -> None:
    a, b = (json.load(open(p)) for p in (a_path, b_path))
    rows = []
    for key, ra in a["runs"].items():
        rb = b["runs"][key]
        rows.append({"run": key, "records": len(ra["records"]), "identical": ra["records"] == rb["records"],
                     "error_a": ra["error"], "error_b": rb["error"]})
        print(f"{key}: {len(ra['records'])} records, identical={rows[-1]['identical']}, error {ra['error']:.6e} / "
              f"{rb['error']:.6e}")
    if out:
        import torch

        from pinn_lora.core.runtime import device_name

        with open(out, "w") as fh:
            json.dump({"device": device_name(torch.device("cpu")), "date": time.strftime("%Y-%m-%d"),
                       "load_average": os.getloadavg(), "a": a["package"], "b": b["package"], "rows": rows}, fh,
                      indent=1)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write")
    ap.add_argument("--compare", nargs=2)
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.write:
        write(args.write)
    if args.compare:
        compare(*args.compare, args.out)
