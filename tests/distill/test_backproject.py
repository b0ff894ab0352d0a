"""Back-projection: the vectorised version against plain loops, and known small cases."""

from __future__ import annotations

import numpy as np
import pytest

from distill.backproject import backproject, backproject_reference
from distill.cameras import cameras_from_angles
from distill.records import KnowledgeUnits
from distill.teachers.base import ViewPrediction
from distill.views import RenderedViews


def synthetic_views(num_views: int = 3, n: int = 400, s: int = 32, seed: int = 0) -> RenderedViews:
    """Random point positions and visibility (no rendering needed for back-projection)."""
    rng = np.random.default_rng(seed)
    uv = rng.uniform(-2, s + 2, (num_views, n, 2)).astype(np.float32)
    inside = ((uv >= 0) & (uv < s)).all(-1)
    visible = inside & (rng.random((num_views, n)) < 0.7)
    return RenderedViews(
        images=np.full((num_views, s, s, 3), 255, np.uint8),
        depth=np.full((num_views, s, s), 2.0, np.float32),
        pixel_labels=np.zeros((num_views, s, s), np.int16),
        point_uv=uv,
        point_visible=visible,
        cameras=cameras_from_angles(np.zeros((num_views, 2)), 2.2, s, 50.0),
    )


def random_preds(views: RenderedViews, masks: bool, seed: int = 0) -> list[ViewPrediction]:
    rng = np.random.default_rng(seed)
    s = views.image_size
    out = []
    for v in range(views.num_views):
        m = int(rng.integers(0, 6)) if v else 0  # view 0 has no predictions
        labels = rng.integers(0, 4, m)
        scores = rng.uniform(0.5, 1.0, m).astype(np.float32)
        if masks:
            out.append(ViewPrediction(labels, scores, None, rng.random((m, s, s)) < 0.3))
        else:
            xy = rng.uniform(-3, s + 3, (m, 2, 2))
            boxes = np.concatenate([xy.min(1), xy.max(1)], 1).astype(np.float32)  # x0 y0 x1 y1
            if m:
                boxes[0] = [5.0, 5.0, 5.0, 9.0]  # an empty box: its unit must be dropped
            out.append(ViewPrediction(labels, scores, boxes))
    return out


def assert_units_equal(a: KnowledgeUnits, b: KnowledgeUnits) -> None:
    np.testing.assert_array_equal(a.view, b.view)
    np.testing.assert_array_equal(a.label, b.label)
    np.testing.assert_array_equal(a.score, b.score)
    np.testing.assert_array_equal(a.offsets, b.offsets)
    np.testing.assert_array_equal(a.point_idx, b.point_idx)


@pytest.mark.parametrize("masks", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_backproject_matches_reference(masks, seed):
    views = synthetic_views(num_views=4, seed=seed)
    preds = random_preds(views, masks, seed)
    fast = backproject(views, preds, "s", "t")
    ref = backproject_reference(views, preds, "s", "t")
    assert len(ref) > 3
    assert_units_equal(fast, ref)
    assert fast.teacher == "t" and fast.shape_id == "s"
    # Every covered point is visible in its unit's view; no unit is empty.
    for k in range(len(fast)):
        pts = fast.unit_points(k)
        assert len(pts) > 0 and views.point_visible[fast.view[k], pts].all()


def test_box_semantics_on_known_points():
    views = synthetic_views(num_views=2, n=5, s=16)
    views.point_uv[:] = np.array([[2.5, 2.5], [7.0, 7.0], [7.99, 3.0], [8.0, 3.0], [12.5, 12.5]], np.float32)
    views.point_visible[:] = True
    views.point_visible[1, 1] = False  # hidden in view 1
    box = np.array([[2.0, 2.0, 8.0, 8.0]], np.float32)  # exclusive ends: x = 8.0 is outside
    preds = [ViewPrediction(np.array([2]), np.array([0.9], np.float32), box)] * 2
    units = backproject(views, preds, "s", "t")
    assert len(units) == 2
    np.testing.assert_array_equal(units.unit_points(0), [0, 1, 2])
    np.testing.assert_array_equal(units.unit_points(1), [0, 2])
    np.testing.assert_array_equal(units.label, [2, 2])
    np.testing.assert_allclose(units.score, [0.9, 0.9])


def test_mask_semantics_on_known_points():
    views = synthetic_views(num_views=1, n=3, s=8)
    views.point_uv[0] = np.array([[1.2, 3.7], [1.9, 4.1], [6.5, 6.5]], np.float32)
    views.point_visible[:] = True
    mask = np.zeros((1, 8, 8), bool)
    mask[0, 3, 1] = True  # row 3, column 1: only the first point's pixel
    units = backproject(views, [ViewPrediction(np.array([1]), np.array([0.7], np.float32), None, mask)], "s", "t")
    np.testing.assert_array_equal(units.point_idx, [0])


def test_no_predictions_gives_no_units():
    views = synthetic_views(num_views=2)
    empty = [ViewPrediction.empty(views.image_size), ViewPrediction.empty(views.image_size, with_masks=True)]
    units = backproject(views, empty, "s", "t")
    assert len(units) == 0 and len(units.point_idx) == 0


def test_bad_inputs_raise():
    views = synthetic_views(num_views=2)
    with pytest.raises(ValueError, match="preds has 1 views"):
        backproject(views, [ViewPrediction.empty(32)], "s", "t")
    bad = ViewPrediction(np.array([0]), np.array([0.9], np.float32), None, np.zeros((1, 5, 5), bool))
    with pytest.raises(ValueError, match="masks"):
        backproject(views, [bad, bad], "s", "t")
    with pytest.raises(ValueError, match="neither"):
        backproject(views, [ViewPrediction(np.array([0]), np.array([0.9], np.float32))] * 2, "s", "t")
