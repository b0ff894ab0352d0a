"""Paired comparison of two ``bench/quality.py`` measurements of the same shapes.

Two quality roots that ran the same seeds, orders and mode (one with a setting, one
without, e.g. ``student.pretrained``) hold, per run, the job's predictions table. This
reads both back, scores every shape of every run against the ground truth, and reports
per student row: each side's mean over categories (mean ± std over runs), the paired
difference (mean ± std over runs) and a 95 % bootstrap interval over the shapes of the
run-averaged difference (``distill.metrics.category_mean_interval``), and per category.

    python -m bench.paired --a bench/results/quality_runs_enc --b bench/results/quality_runs_final \
        --mode pre --seeds 0 1 2 --orders 100 101

The last line of output is a one-line JSON summary; ``--out`` writes it with the
per-category table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bench.quality import student_shape_scores
from cluster.store.storage import Storage
from distill.metrics import category_mean_interval
from distill.records import SHAPE_SCHEMA, table_to_shapes

ROWS = ("student", "student_units")


def scores(root: str, mode: str, seeds: list[int], orders: list[int]) -> tuple[list[dict], dict[str, str]]:
    """Per run (seed × order): {row: {shape: mIoU}}; and each shape's category."""
    storage = Storage(str(Path(root).resolve()))
    runs, category = [], {}
    for seed in seeds:
        shapes = table_to_shapes(storage.read_table(f"quality-s{seed}/eval/shapes", schema=SHAPE_SCHEMA))
        truth = {s.shape_id: s for s in shapes}
        category.update({s.shape_id: s.category for s in shapes})
        for order in orders:
            runs.append(student_shape_scores(storage, f"quality-s{seed}-{mode}-o{order}", truth))
    return runs, category


def category_mean(per_shape: dict[str, float], category: dict[str, str]) -> float:
    cats: dict[str, list[float]] = {}
    for sid, v in per_shape.items():
        cats.setdefault(category[sid], []).append(v)
    return float(np.mean([np.mean(v) for v in cats.values()]))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="quality root with the setting")
    ap.add_argument("--b", required=True, help="quality root without it")
    ap.add_argument("--mode", default="pre", choices=["pre", "tta"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--orders", type=int, nargs="+", default=[100, 101])
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    a, category = scores(args.a, args.mode, args.seeds, args.orders)
    b, _ = scores(args.b, args.mode, args.seeds, args.orders)
    summary: dict = {"a": args.a, "b": args.b, "mode": args.mode, "runs": len(a)}
    for row in ROWS:
        shapes = sorted(set.intersection(*(set(r[row]) for r in a + b)))
        if not shapes:
            continue
        ma = [category_mean({s: r[row][s] for s in shapes}, category) for r in a]
        mb = [category_mean({s: r[row][s] for s in shapes}, category) for r in b]
        diff = np.subtract(ma, mb)
        per_shape = {s: float(np.mean([ra[row][s] - rb[row][s] for ra, rb in zip(a, b, strict=True)])) for s in shapes}
        by_cat: dict[str, list[float]] = {}
        for s, v in per_shape.items():
            by_cat.setdefault(category[s], []).append(v)
        low, high = category_mean_interval({c: np.asarray(v) for c, v in by_cat.items()})
        summary[row] = {
            "a": round(float(np.mean(ma)), 2),
            "a_std": round(float(np.std(ma)), 2),
            "b": round(float(np.mean(mb)), 2),
            "b_std": round(float(np.std(mb)), 2),
            "diff": round(float(diff.mean()), 2),
            "diff_std": round(float(diff.std()), 2),
            "diff_ci95": [round(low, 2), round(high, 2)],
            "runs_up": int((diff > 0).sum()),
            "per_category": {c: round(float(np.mean(v)), 2) for c, v in sorted(by_cat.items())},
        }
        r = summary[row]
        print(
            f"{row}: {r['a']:.1f} ± {r['a_std']:.1f} vs {r['b']:.1f} ± {r['b_std']:.1f}: "
            f"{r['diff']:+.1f} ± {r['diff_std']:.1f} [{low:+.1f}, {high:+.1f}], up in {r['runs_up']}/{len(a)} runs"
        )
        print("  " + ", ".join(f"{c} {v:+.1f}" for c, v in r["per_category"].items()))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: ({kk: vv for kk, vv in v.items() if kk != "per_category"} if isinstance(v, dict) else v)
                      for k, v in summary.items()}))  # fmt: skip
    return summary


if __name__ == "__main__":
    main()
