"""What a shape's knowledge units say about each of its points, for and against each part,
and the student's prediction combined with it (``eval.units_weight``).

Evidence. Units carry the view they were seen from. In view v, part c was *detected*
with score d_vc (the best of its units in v, 0 if none) and point i is *seen* when some
unit of v, of any part, covers it. Per point and part:

    pos(i, c) = Σ_v max{ score_k : k ∈ units of v with label c covering i }
    neg(i, c) = Σ_v d_vc · [i seen in v] · [no unit of v with label c covers i]

``pos`` is the vote with one ballot per view and part (``distill.voting`` sums every unit).
``neg`` is what the vote leaves out. A box teacher's errors are spatially coherent in one
view (a box bleeds onto the parts around it, a near-whole-object box gets one part's
label) but not across views: a point that one view's box of part c covered by accident
is, in another view that sees it and found c, outside every box of c. A point of the
part is inside the part's boxes in most such views.

Combination. The student is a prior learnt across shapes. The units are this shape's own
observations. Per point the combined label is

    argmax_c  log p_student(c | i) + w · (pos(i, c) − λ · neg(i, c))

with w = ``eval.units_weight`` and λ = ``eval.units_negative``. Points no unit
covers and no view saw keep the student's label. On the Labeled PSB sample (glip_like,
3 seeds × 2 orders) it adds 5 points over the student in TTA and 10 in Pre
(docs/results.md, "The student with the units"). It needs the shape's units, so it
applies to shapes the teacher has seen: the distillation shapes (TTA) and evaluated
shapes whose knowledge was extracted.

Pure NumPy: no torch, no IO.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from distill.records import KnowledgeUnits
from distill.voting import check_units, fill_nearest


def _check(units: KnowledgeUnits, num_points: int, num_parts: int) -> None:
    check_units(units, num_points, num_parts)
    if len(units) and units.view.min() < 0:
        raise ValueError(f"units of {units.shape_id} have negative view indices")


def unit_evidence(units: KnowledgeUnits, num_points: int, num_parts: int) -> tuple[np.ndarray, np.ndarray]:
    """(pos, neg): (N, P) float64 each, the evidence for and against each part at each
    point (module docstring). Vectorised over the (unit, point) pairs: memory is
    O(pairs + views · (N + P) + N · P), never views · parts · points."""
    _check(units, num_points, num_parts)
    n, p = num_points, num_parts
    pos = np.zeros((n, p))
    neg = np.zeros((n, p))
    if len(units) == 0:
        return pos, neg
    views, view_of_unit = np.unique(units.view, return_inverse=True)
    v = len(views)
    sizes = np.diff(units.offsets)
    pair_unit = np.repeat(np.arange(len(units)), sizes)
    pair_view = view_of_unit[pair_unit]
    pair_label = units.label[pair_unit]
    pair_score = units.score[pair_unit].astype(np.float64)
    # One ballot per (view, part, point): the best unit's score.
    key = (pair_view * p + pair_label) * n + units.point_idx
    order = np.lexsort((pair_score, key))  # by key, then score ascending
    last = np.r_[key[order][1:] != key[order][:-1], True]  # the best of each key
    best_key, best_score = key[order][last], pair_score[order][last]
    point, view_label = best_key % n, best_key // n
    label = view_label % p
    np.add.at(pos, (point, label), best_score)
    # Detection score of each part in each view, and which points each view sees.
    detected = np.zeros(v * p)
    np.maximum.at(detected, view_label, best_score)
    detected = detected.reshape(v, p)
    seen = np.zeros((v, n))
    seen[view_label // p, point] = 1.0
    # Σ_v d_vc·seen_vi over every view, less the views where a unit of c covers i.
    neg = seen.T @ detected
    np.subtract.at(neg, (point, label), detected.reshape(-1)[view_label])
    return pos, np.clip(neg, 0.0, None)


def combine(log_probs: np.ndarray, pos: np.ndarray, neg: np.ndarray, weight: float, negative: float) -> np.ndarray:
    """The student's log-probabilities (N, P) and the units' evidence (``unit_evidence``)
    → (N,) int64 labels: argmax of log p + weight · (pos − negative · neg)."""
    if log_probs.shape != pos.shape or pos.shape != neg.shape:
        raise ValueError(f"log_probs {log_probs.shape}, pos {pos.shape} and neg {neg.shape} must be equal (N, P)")
    if weight < 0 or negative < 0:
        raise ValueError(f"weight={weight} and negative={negative} must be >= 0")
    return np.argmax(log_probs + weight * (pos - negative * neg), axis=1).astype(np.int64)


@dataclass(frozen=True)
class StudentWithUnits:
    """The combination above as one setting: the student's labels of a shape moved by its
    own units' evidence (``weight`` w = ``eval.units_weight``, ``negative`` λ =
    ``eval.units_negative``); weight 0: off. It is the ``student_units`` row, and the
    relabelling of self-training rounds."""

    weight: float = 0.0
    negative: float = 1.0

    @classmethod
    def of(cls, eval_cfg: Any) -> StudentWithUnits:
        """From an ``EvalConfig`` (its ``units_weight`` and ``units_negative``)."""
        return cls(eval_cfg.units_weight, eval_cfg.units_negative)

    def labels(self, log_probs: np.ndarray, units: KnowledgeUnits) -> np.ndarray:
        """The combined labels (N,) of one shape from the student's log-probabilities
        (N, P) and its units (no unit: the student's argmax)."""
        return combine(log_probs, *unit_evidence(units, *log_probs.shape), self.weight, self.negative)


def evidence_vote(units: KnowledgeUnits, points: np.ndarray, num_parts: int, negative: float = 1.0) -> np.ndarray:
    """The vote with the evidence against (a baseline beside ``voting_nearest``): per
    covered point argmax of pos − negative · neg, the others their nearest covered
    point's label → (N,) int64 (all −1 when no point is covered)."""
    points = np.asarray(points)
    pos, neg = unit_evidence(units, len(points), num_parts)
    labels = np.where(pos.max(1) > 0, np.argmax(pos - negative * neg, axis=1), -1)
    return fill_nearest(labels.astype(np.int64), points)


def unit_evidence_reference(units: KnowledgeUnits, num_points: int, num_parts: int) -> tuple[np.ndarray, np.ndarray]:
    """``unit_evidence`` as plain loops over views, parts and points (for tests)."""
    _check(units, num_points, num_parts)
    pos = np.zeros((num_points, num_parts))
    neg = np.zeros((num_points, num_parts))
    for view in sorted({int(x) for x in units.view}):
        best = np.zeros((num_parts, num_points))
        for k in range(len(units)):
            if int(units.view[k]) == view:
                for i in units.unit_points(k):
                    best[units.label[k], i] = max(best[units.label[k], i], float(units.score[k]))
        seen = best.max(0) > 0
        covered = np.zeros((num_parts, num_points), bool)
        for k in range(len(units)):
            if int(units.view[k]) == view:
                covered[units.label[k], units.unit_points(k)] = True
                seen[units.unit_points(k)] = True
        for c in range(num_parts):
            detected = best[c].max()
            for i in range(num_points):
                pos[i, c] += best[c, i]
                if seen[i] and not covered[c, i]:
                    neg[i, c] += detected
    return pos, neg
