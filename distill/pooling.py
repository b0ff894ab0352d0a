"""Pooling over superpoints: the units' evidence before the loss, the student's after it.

Targets (``pool_units``, ``train.superpoint_targets``). The forward-distillation loss
(``distill.losses``) gives point i the soft target

    e_i(c) = (1 / |U_i|) · Σ_{k ∈ U_i, y_k = c} s_k          (0 where no unit covers i)

(up to the class weights). Pooled, every point of superpoint j takes instead the mean of
e over the *covered* points of j,

    ē_j(c) = (1 / |C_j|) · Σ_{i ∈ C_j} e_i(c),     C_j = {i ∈ SP_j : |U_i| > 0},

as one unit per (j, c) with ē_j(c) > 0: label c, score ē_j(c), covering all of SP_j
(``view`` = −1: a pooled unit belongs to no view). A superpoint no unit touches gets no
unit. So the evidence follows geometry: a box that bleeds over a part's edge in most views
is outvoted inside the superpoints it bleeds into, points no view saw inside a seen
superpoint get its evidence, and the loss (which divides by the units covering a point)
weighs a superpoint whose points disagree by 1 / (labels present) — ambiguous
superpoints count less. Class weights are then counted over the pooled pairs.

Inference (``pool_log_probs``, ``student.pool=superpoints``): each superpoint takes the
argmax of its points' mean log-probability, and every point its superpoint's label — the
student alone, no teacher: superpoints are geometry.

Pure NumPy: no torch, no IO.
"""

from __future__ import annotations

import numpy as np

from distill.records import KnowledgeUnits
from distill.voting import check_units

FIX = "the superpoint column does not match the cloud; recompute it (re-run ingest)"


def check_superpoint_ids(shape_id: str, superpoints: np.ndarray, num_points: int) -> np.ndarray:
    """``superpoints`` as (N,) int64 ids ≥ 0, or a ``ValueError`` naming the shape and the fix."""
    sp = np.asarray(superpoints)
    if sp.shape != (num_points,) or not np.issubdtype(sp.dtype, np.integer):
        raise ValueError(
            f"superpoints of {shape_id}: shape {sp.shape} dtype {sp.dtype}, not ({num_points},) ints: {FIX}"
        )
    if num_points and sp.min() < 0:
        raise ValueError(f"superpoints of {shape_id}: negative ids: {FIX}")
    return sp.astype(np.int64)


def point_evidence(
    units: KnowledgeUnits, num_points: int, num_parts: int, pair_weight: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(e, covering): e (N, P) float64, the loss's soft target of each point (module
    docstring), and covering (N,) int64, how many units cover each point. pair_weight:
    (M,) per (point, unit) pair (a point-level re-scoring), multiplying s_k there."""
    check_units(units, num_points, num_parts)
    sizes = np.diff(units.offsets)
    label = np.repeat(units.label, sizes)
    score = np.repeat(units.score.astype(np.float64), sizes)
    if pair_weight is not None:
        if len(pair_weight) != len(score):
            raise ValueError(f"units of {units.shape_id}: {len(pair_weight)} pair weights for {len(score)} pairs")
        score = score * np.asarray(pair_weight, np.float64)
    covering = np.bincount(units.point_idx, minlength=num_points)
    flat = units.point_idx * num_parts + label
    e = np.bincount(flat, weights=score, minlength=num_points * num_parts).reshape(num_points, num_parts)
    return e / np.maximum(covering, 1)[:, None], covering


def pool_units(
    units: KnowledgeUnits, superpoints: np.ndarray, num_parts: int, pair_weight: np.ndarray | None = None
) -> KnowledgeUnits:
    """The units pooled within superpoints (module docstring): one unit per (superpoint,
    part) with evidence, covering the whole superpoint, points in ascending order, units in
    (superpoint, part) order. pair_weight: see ``point_evidence``. Vectorised."""
    sp = check_superpoint_ids(units.shape_id, superpoints, len(superpoints))
    n = len(sp)
    if len(units) == 0:
        return KnowledgeUnits.empty(units.shape_id, units.teacher, units.round)
    e, covering = point_evidence(units, n, num_parts, pair_weight)
    s = int(sp.max()) + 1
    covered = covering > 0
    total = np.zeros((s, num_parts))
    np.add.at(total, sp[covered], e[covered])
    count = np.bincount(sp[covered], minlength=s)
    mean = total / np.maximum(count, 1)[:, None]
    sp_id, part = np.nonzero(mean > 0)  # row-major: by superpoint, then part
    members = np.argsort(sp, kind="stable")  # the points of superpoint j, ascending
    bounds = np.r_[0, np.cumsum(np.bincount(sp, minlength=s))]
    point_sets = [members[bounds[j] : bounds[j + 1]] for j in sp_id]
    return KnowledgeUnits.from_lists(
        units.shape_id,
        [-1] * len(sp_id),
        part.tolist(),
        mean[sp_id, part].astype(np.float32).tolist(),
        point_sets,
        units.teacher,
        units.round,
    )


def pool_units_reference(units: KnowledgeUnits, superpoints: np.ndarray, num_parts: int) -> KnowledgeUnits:
    """``pool_units`` as plain loops over superpoints, points and units (for tests)."""
    sp = [int(x) for x in superpoints]
    cover: list[list[tuple[int, float]]] = [[] for _ in sp]
    for k in range(len(units)):
        for i in units.unit_points(k):
            cover[int(i)].append((int(units.label[k]), float(units.score[k])))
    views, labels, scores, sets = [], [], [], []
    for j in range(max(sp) + 1):
        points = [i for i, x in enumerate(sp) if x == j]
        seen = [i for i in points if cover[i]]
        for c in range(num_parts):
            ev = sum(sum(s for y, s in cover[i] if y == c) / len(cover[i]) for i in seen) / max(len(seen), 1)
            if ev > 0:
                views.append(-1), labels.append(c), scores.append(ev), sets.append(np.array(points, np.int64))
    return KnowledgeUnits.from_lists(units.shape_id, views, labels, scores, sets, units.teacher, units.round)


def pool_log_probs(log_probs: np.ndarray, superpoints: np.ndarray, shape_id: str = "?") -> np.ndarray:
    """(N, P) log-probabilities of one shape → (N,) int64 labels: each point takes the
    argmax of its superpoint's mean log-probability (ties → the lower part index)."""
    log_probs = np.asarray(log_probs)
    if log_probs.ndim != 2:
        raise ValueError(f"log_probs of {shape_id} must be (N, P), got shape {log_probs.shape}")
    sp = check_superpoint_ids(shape_id, superpoints, len(log_probs))
    if len(sp) == 0:
        return np.zeros(0, np.int64)
    total = np.zeros((int(sp.max()) + 1, log_probs.shape[1]))
    np.add.at(total, sp, log_probs)
    return total.argmax(1)[sp].astype(np.int64)  # the mean's argmax is the sum's
