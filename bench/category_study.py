"""Why a category fails: its shapes, the teacher's units on them, and what a student does
with its own training shapes (docs/results.md, "Why Hand, Armadillo, Bust and FourLeg fail").

A diagnostic after the fact: it reads the scored shapes' labels and chooses nothing. For
the extraction run ``quality-s{seed}`` of a ``bench/quality.py`` root (its ``eval/``
shapes and units) and the TTA student ``quality-s{student_seed}-tta-o{order}``, per
category:

* parts present a shape, the smallest part's share of the points;
* unit precision (the share of a unit's (point, unit) pairs whose point has the unit's
  label), the share of parts whose points the units of that label cover under 20 %;
* superpoint purity (the share of a superpoint's points in its majority part);
* the student against ``voting_views`` on the shapes it was distilled on: the share of
  points with the same label, and where they differ the share each gets right.

    python -m bench.category_study --root bench/results/quality_runs_rho0.8 --seed 0 --student-seed 1

Prints a Markdown table; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from bench.common import RESULTS
from bench.quality import load
from cluster.passes.evaluate import baseline_predictions
from cluster.store.storage import Storage
from cluster.training.students import load_students, student_log_probs
from distill.records import KnowledgeUnits, Shape
from distill.superpoints import shape_superpoints


def shape_facts(s: Shape, u: KnowledgeUnits) -> dict[str, float]:
    """The shape's parts and its units' quality against its labels."""
    y = s.labels
    assert y is not None
    pair_label = np.repeat(u.label, np.diff(u.offsets))
    present = [c for c in range(s.num_parts) if (y == c).any()]
    covered = [np.isin(np.flatnonzero(y == c), u.point_idx[pair_label == c]).mean() for c in present]
    sp = shape_superpoints(s)
    purity = [np.bincount(y[sp == j]).max() / (sp == j).sum() for j in np.unique(sp)]
    return {
        "parts": float(len(present)),
        "smallest": 100.0 * min((y == c).mean() for c in present),
        "precision": float(np.mean(pair_label == y[u.point_idx])) if len(pair_label) else float("nan"),
        "missed": 100.0 * float(np.mean([c < 0.2 for c in covered])),
        "purity": float(np.mean(purity)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(RESULTS / "quality_runs"))
    parser.add_argument("--seed", type=int, default=0, help="the extraction run whose units are studied")
    parser.add_argument("--student-seed", type=int, default=0, help="the TTA student's seed (its own extraction)")
    parser.add_argument("--order", type=int, default=100)
    args = parser.parse_args()
    storage = Storage(args.root)
    shapes, units = load(storage, f"quality-s{args.seed}/eval/shapes", f"quality-s{args.seed}/eval/knowledge/round_0")
    facts: dict[str, list[dict[str, float]]] = {}
    for s in shapes:
        facts.setdefault(s.category, []).append(
            shape_facts(s, units.get(s.shape_id) or KnowledgeUnits.empty(s.shape_id))
        )
    # The student against the vote on its own distillation shapes (its seed's units).
    own, own_units = load(
        storage, f"quality-s{args.student_seed}/eval/shapes", f"quality-s{args.student_seed}/eval/knowledge/round_0"
    )
    students = load_students(storage, f"quality-s{args.student_seed}-tta-o{args.order}")
    counts: dict[str, np.ndarray] = {}
    for _, s, log_probs in student_log_probs(students, own, 16):
        vote = baseline_predictions(s, own_units[s.shape_id])["voting_views"]
        pred, y = log_probs.argmax(1), s.labels
        differ = pred != vote
        c = counts.setdefault(s.category, np.zeros(4))
        c += [len(pred), (~differ).sum(), (differ & (pred == y)).sum(), (differ & (vote == y)).sum()]
    keys = ("parts", "smallest", "precision", "missed", "purity")
    out: dict[str, dict[str, float]] = {}
    print("| category | parts | smallest part (%) | unit precision | parts missed (%) | superpoint purity | "
          "student = vote | differ: student / vote right |")  # fmt: skip
    print("|---|" + "---:|" * 7)
    for cat in sorted(facts):
        row = {k: float(np.nanmean([f[k] for f in facts[cat]])) for k in keys}
        n, same, st, vt = counts.get(cat, np.zeros(4))
        row.update(agree=same / max(n, 1), student_right=st / max(n - same, 1), vote_right=vt / max(n - same, 1))
        out[cat] = {k: round(v, 3) for k, v in row.items()}
        print(f"| {cat} | {row['parts']:.1f} | {row['smallest']:.1f} | {row['precision']:.2f} | {row['missed']:.0f} | "
              f"{row['purity']:.2f} | {row['agree']:.2f} | {row['student_right']:.2f} / {row['vote_right']:.2f} |")  # fmt: skip
    print(json.dumps(out))


if __name__ == "__main__":
    main()
