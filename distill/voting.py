"""The PartSLIP-style voting baseline: label each point by the knowledge units covering it.

Per point and part, sum the scores of the units of that part that cover the point; the
point takes the part with the largest sum. A point no unit covers (with a positive
score) stays unlabelled (−1), or in ``vote_nearest`` takes the label of the nearest
labelled point.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from distill.records import KnowledgeUnits


def check_units(units: KnowledgeUnits, num_points: int, num_parts: int) -> None:
    """Refuse units that do not fit a shape of ``num_points`` points and ``num_parts`` parts."""
    if num_points < 1 or num_parts < 1:
        raise ValueError(f"num_points={num_points} and num_parts={num_parts} must be >= 1")
    if len(units.point_idx) and (units.point_idx.min() < 0 or units.point_idx.max() >= num_points):
        raise ValueError(f"units of {units.shape_id} index points outside [0, {num_points - 1}]")
    if len(units) and (units.label.min() < 0 or units.label.max() >= num_parts):
        raise ValueError(f"units of {units.shape_id} have labels outside [0, {num_parts - 1}]")


def vote_scores(units: KnowledgeUnits, num_points: int, num_parts: int) -> np.ndarray:
    """(N, P) float64: per point and part, the summed scores of the covering units."""
    check_units(units, num_points, num_parts)
    sizes = np.diff(units.offsets)
    label = np.repeat(units.label, sizes)  # per covered (unit, point) pair
    score = np.repeat(units.score.astype(np.float64), sizes)
    flat = units.point_idx * num_parts + label
    return np.bincount(flat, weights=score, minlength=num_points * num_parts).reshape(num_points, num_parts)


def vote(units: KnowledgeUnits, num_points: int, num_parts: int) -> np.ndarray:
    """(N,) int64 part per point: argmax of ``vote_scores`` (ties → the lower part index),
    −1 where no unit with a positive score covers the point."""
    acc = vote_scores(units, num_points, num_parts)
    return np.where(acc.max(1) > 0, acc.argmax(1), -1).astype(np.int64)


def vote_nearest(units: KnowledgeUnits, points: np.ndarray, num_parts: int) -> np.ndarray:
    """``vote``, then every unlabelled point takes the label of its nearest labelled point.

    points: (N, 3) → (N,) int64 (all −1 when no point is covered).
    """
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be (N, 3), got {points.shape}")
    return fill_nearest(vote(units, len(points), num_parts), points)


def fill_nearest(labels: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Every −1 of ``labels`` (N,) takes the label of its nearest labelled point of
    ``points`` (N, 3); unchanged when none or all are labelled."""
    known = labels >= 0
    if known.all() or not known.any():
        return labels
    _, nearest = cKDTree(points[known]).query(points[~known])
    labels[~known] = labels[known][nearest]
    return labels


def vote_reference(units: KnowledgeUnits, num_points: int, num_parts: int) -> np.ndarray:
    """``vote`` as plain loops (for tests)."""
    acc = [[0.0] * num_parts for _ in range(num_points)]
    for k in range(len(units)):
        for i in units.unit_points(k):
            acc[int(i)][int(units.label[k])] += float(units.score[k])
    out = []
    for row in acc:
        best = max(range(num_parts), key=lambda p: (row[p], -p))
        out.append(best if row[best] > 0 else -1)
    return np.array(out, np.int64)
