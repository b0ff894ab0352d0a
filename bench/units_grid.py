"""How ``eval.units_weight`` (w) and ``eval.units_negative`` (λ) were chosen: ``student_units``
over a grid of both, on the students a ``bench/quality.py`` run left behind.

For every (seed, order) student of one mode under ``--root``, the evaluated shapes' log-
probabilities (``distill.passes.predict_log_probs``) and their units' evidence
(``distill.evidence.unit_evidence``) are computed once; each grid point is then one
``combine`` per shape, scored as evaluation scores (``MIoUSums``, mean over categories).

    python bench/quality.py --seeds 0 1 2 --orders 100 101 --modes tta   # leaves bench/results/quality_runs
    python bench/units_grid.py --mode tta

Prints one line per grid point, best first (mean ± std over the runs, then each run); the
last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.quality import load  # noqa: E402
from cluster.checkpoints import load_student  # noqa: E402
from cluster.storage import Storage  # noqa: E402
from distill.evidence import combine, unit_evidence  # noqa: E402
from distill.metrics import MIoUSums  # noqa: E402
from distill.passes import predict_log_probs  # noqa: E402

WEIGHTS = (0.1, 0.2, 0.3, 0.5, 0.8)
NEGATIVES = (0.0, 0.25, 0.5, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(ROOT / "bench" / "results" / "quality_runs"))
    parser.add_argument("--mode", choices=["pre", "tta"], default="tta")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--orders", type=int, nargs="+", default=[100, 101])
    args = parser.parse_args()
    torch.set_num_threads(2)
    storage = Storage(args.root)
    grid = [(w, lam) for w in WEIGHTS for lam in NEGATIVES]
    scores: dict[tuple[float, float] | str, list[float]] = {}
    for seed in args.seeds:
        src = f"quality-s{seed}"
        shapes, units = load(storage, f"{src}/eval/shapes", f"{src}/eval/knowledge/round_0")
        evidence = [unit_evidence(units[s.shape_id], s.num_points, s.num_parts) for s in shapes]
        for order in args.orders:
            model, space, _ = load_student(storage, f"{src}-{args.mode}-o{order}", "all")
            log_probs = predict_log_probs(model, shapes, "cpu", 8, space)
            sums: dict[tuple[float, float] | str, MIoUSums] = {key: MIoUSums() for key in ["student", *grid]}
            for s, lp, (pos, neg) in zip(shapes, log_probs, evidence):
                sums["student"].add(s.shape_id, s.category, lp.argmax(1), s.labels, s.num_parts)
                for w, lam in grid:
                    sums[(w, lam)].add(s.shape_id, s.category, combine(lp, pos, neg, w, lam), s.labels, s.num_parts)
            for key, t in sums.items():
                scores.setdefault(key, []).append(t.category_mean())
            print(f"seed {seed} order {order}: student {sums['student'].category_mean():.1f}", file=sys.stderr)
    ranked = sorted(scores.items(), key=lambda kv: -float(np.mean(kv[1])))
    for key, v in ranked:
        name = "student alone" if key == "student" else f"w={key[0]} λ={key[1]}"
        print(f"{name:16s} {np.mean(v):5.1f} ± {np.std(v):.1f}  {[round(x, 1) for x in v]}")
    best = next(k for k, _ in ranked if k != "student")
    print(json.dumps({"mode": args.mode, "best": {"weight": best[0], "negative": best[1]}, "runs": len(scores["student"]),
                      "best_miou": round(float(np.mean(scores[best])), 2),
                      "student": round(float(np.mean(scores["student"])), 2)}))  # fmt: skip


if __name__ == "__main__":
    main()
