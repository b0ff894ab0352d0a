"""How ``eval.units_weight`` (w) and ``eval.units_negative`` (λ) are chosen, without the
label of any reported shape: ``student_units`` over a grid of both.

The rule (``--runs``, the default): the students of finished procedural jobs (``python
jobs/pretrain.py run=units-o{0,1,2} train.order_seed={0,1,2}``), combined with the units
of their own *distillation* shapes — the procedural train split, which no table reports
(the default job reports the held-out test split, the PSB rows the PSB test half) — and
scored against those shapes' procedural labels. That is where ``student_units`` and the
self-training relabels are used: on shapes the student was distilled on. The chosen point
is the best mean over the runs; points within one point of it are printed as the flat top.

The diagnostic (``--diagnostic-psb``, after the fact, never the rule): the same grid on the
students a ``bench/quality.py`` run left behind, scored on the PSB test half's labels.

For every student the shapes' log-probabilities (``distill.passes.predict_log_probs``) and
their units' evidence (``distill.evidence.unit_evidence``) are computed once; each grid
point is then one ``combine`` per shape, scored as evaluation scores (``MIoUSums``, mean
over categories).

    for o in 0 1 2; do python jobs/pretrain.py run=units-o$o train.order_seed=$o; done
    python -m bench.units_grid --runs units-o0 units-o1 units-o2
    python -m bench.units_grid --diagnostic-psb --mode tta    # after bench/quality.py

Prints one line per grid point, best first (mean ± std over the runs, then each run); the
last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from bench.common import RESULTS, ROOT
from bench.quality import load
from cluster.store.storage import Storage
from cluster.training.checkpoints import load_student
from distill.evidence import combine, unit_evidence
from distill.metrics import MIoUSums
from distill.passes import predict_log_probs

WEIGHTS = (0.1, 0.2, 0.3, 0.5, 0.8)
NEGATIVES = (0.0, 0.25, 0.5, 1.0)


def student_runs(args: argparse.Namespace) -> list[tuple[Storage, str, str, str]]:
    """(storage, student run, shapes dir, units dir) of every student the grid scores."""
    if args.diagnostic_psb:
        storage = Storage(args.root)
        return [
            (storage, f"quality-s{seed}-{args.mode}-o{order}", f"quality-s{seed}/eval/shapes",
             f"quality-s{seed}/eval/knowledge/round_0")
            for seed in args.seeds
            for order in args.orders
        ]  # fmt: skip
    storage = Storage(args.storage_root)
    return [(storage, run, f"{run}/shapes", f"{run}/knowledge/round_0") for run in args.runs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=["units-o0", "units-o1", "units-o2"], help="procedural job runs")
    parser.add_argument("--storage-root", default=str(ROOT / "runs"))
    parser.add_argument("--diagnostic-psb", action="store_true", help="score on the PSB test half (after the fact)")
    parser.add_argument("--root", default=str(RESULTS / "quality_runs"))
    parser.add_argument("--mode", choices=["pre", "tta"], default="tta")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--orders", type=int, nargs="+", default=[100, 101])
    args = parser.parse_args()
    torch.set_num_threads(2)
    grid = [(w, lam) for w in WEIGHTS for lam in NEGATIVES]
    scores: dict[tuple[float, float] | str, list[float]] = {}
    for storage, run, shapes_dir, units_dir in student_runs(args):
        shapes, units = load(storage, shapes_dir, units_dir)
        shapes = [s for s in shapes if s.labels is not None and s.shape_id in units]
        evidence = [unit_evidence(units[s.shape_id], s.num_points, s.num_parts) for s in shapes]
        model, space, _ = load_student(storage, run, "all")
        log_probs = predict_log_probs(model, shapes, "cpu", 8, space)
        sums: dict[tuple[float, float] | str, MIoUSums] = {key: MIoUSums() for key in ["student", *grid]}
        for s, lp, (pos, neg) in zip(shapes, log_probs, evidence):
            sums["student"].add(s.shape_id, s.category, lp.argmax(1), s.labels, s.num_parts)
            for w, lam in grid:
                sums[(w, lam)].add(s.shape_id, s.category, combine(lp, pos, neg, w, lam), s.labels, s.num_parts)
        for key, t in sums.items():
            scores.setdefault(key, []).append(t.category_mean())
        print(f"{run}: {len(shapes)} shapes, student {sums['student'].category_mean():.1f}", file=sys.stderr)
    ranked = sorted(scores.items(), key=lambda kv: -float(np.mean(kv[1])))
    for key, v in ranked:
        name = "student alone" if key == "student" else f"w={key[0]} λ={key[1]}"
        print(f"{name:16s} {np.mean(v):5.1f} ± {np.std(v):.1f}  {[round(x, 1) for x in v]}")
    best = next(k for k, _ in ranked if k != "student")
    top = float(np.mean(scores[best]))
    flat = [list(k) for k, v in ranked if k != "student" and float(np.mean(v)) >= top - 1.0]
    print(json.dumps({"source": "psb diagnostic" if args.diagnostic_psb else "procedural distillation shapes",
                      "mode": args.mode if args.diagnostic_psb else "tta", "best": {"weight": best[0], "negative": best[1]},
                      "runs": len(scores["student"]), "best_miou": round(top, 2), "flat_top": flat,
                      "student": round(float(np.mean(scores["student"])), 2)}))  # fmt: skip


if __name__ == "__main__":
    main()
