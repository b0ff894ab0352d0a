"""Back-projection: 2D boxes / masks of each view → knowledge units on the 3D points.

A unit (docs/design.md §3) is one box or mask of one view: the points visible in that view whose
projection falls inside the box (or on a mask pixel), carrying the prediction's label
and score. Units that cover no point are dropped.

Containment: a box is ``x0, y0, x1, y1`` in pixel coordinates with exclusive ends, and a
point at ``(u, v)`` is inside when ``x0 <= u < x1`` and ``y0 <= v < y1``; for integer
boxes (``box_of_mask``) that is exactly "the point's pixel lies in the box". A point is
on a mask when ``mask[floor(v), floor(u)]``.
"""

from __future__ import annotations

import numpy as np

from distill.records import KnowledgeUnits
from distill.teachers.base import ViewPrediction
from distill.views import RenderedViews


def _check(views: RenderedViews, preds: list[ViewPrediction]) -> None:
    if len(preds) != views.num_views:
        raise ValueError(f"preds has {len(preds)} views, the rendered views {views.num_views}")
    for v, p in enumerate(preds):
        if p.masks is None and p.boxes is None and len(p) > 0:
            raise ValueError(f"preds[{v}] has neither boxes nor masks")
        if p.masks is not None and p.masks.shape[1:] != (views.image_size, views.image_size):
            raise ValueError(f"preds[{v}].masks {p.masks.shape} do not match images of {views.image_size}²")


def backproject(views: RenderedViews, preds: list[ViewPrediction], shape_id: str, teacher: str) -> KnowledgeUnits:
    """Knowledge units of one shape (masks win over boxes when a prediction has both).

    views: V rendered views with N points · preds: V ``ViewPrediction`` → ``KnowledgeUnits``
    ordered by view, then by prediction.
    """
    _check(views, preds)
    view_ids, labels, scores, sets = [], [], [], []
    for v, pred in enumerate(preds):
        if len(pred) == 0:
            continue
        vis = np.nonzero(views.point_visible[v])[0]  # (n,) indices of the visible points
        uv = views.point_uv[v, vis].astype(np.float64)  # (n, 2)
        if pred.masks is not None:
            col = np.floor(uv[:, 0]).astype(np.int64)
            row = np.floor(uv[:, 1]).astype(np.int64)
            inside = pred.masks[:, row, col]  # (M, n): visible points lie inside the image
        else:
            b = np.asarray(pred.boxes, np.float64)[:, :, None]  # (M, 4, 1)
            u, w = uv[None, :, 0], uv[None, :, 1]
            inside = (u >= b[:, 0]) & (u < b[:, 2]) & (w >= b[:, 1]) & (w < b[:, 3])  # (M, n)
        for m in range(len(pred)):
            covered = vis[inside[m]]
            if len(covered):
                view_ids.append(v)
                labels.append(int(pred.labels[m]))
                scores.append(float(pred.scores[m]))
                sets.append(covered)
    return KnowledgeUnits.from_lists(shape_id, view_ids, labels, scores, sets, teacher=teacher)


def backproject_reference(
    views: RenderedViews, preds: list[ViewPrediction], shape_id: str, teacher: str
) -> KnowledgeUnits:
    """``backproject`` written as plain loops over predictions and points (for tests)."""
    _check(views, preds)
    view_ids, labels, scores, sets = [], [], [], []
    for v, pred in enumerate(preds):
        for m in range(len(pred)):
            covered = []
            for n in range(views.point_uv.shape[1]):
                if not views.point_visible[v, n]:
                    continue
                u, w = float(views.point_uv[v, n, 0]), float(views.point_uv[v, n, 1])
                if pred.masks is not None:
                    hit = bool(pred.masks[m, int(np.floor(w)), int(np.floor(u))])
                else:
                    x0, y0, x1, y1 = (float(c) for c in pred.boxes[m])
                    hit = x0 <= u < x1 and y0 <= w < y1
                if hit:
                    covered.append(n)
            if covered:
                view_ids.append(v)
                labels.append(int(pred.labels[m]))
                scores.append(float(pred.scores[m]))
                sets.append(np.array(covered, np.int64))
    return KnowledgeUnits.from_lists(shape_id, view_ids, labels, scores, sets, teacher=teacher)
