"""render_shape: outputs, labels, backend choice, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from distill.cameras import make_cameras
from distill.config import RenderConfig
from distill.records import Mesh
from distill.render import renderer
from distill.render.renderer import render_shape, resolve_backend
from distill.render.splat import splat_points
from tests.distill.render.shapes import two_box_shape


@pytest.mark.parametrize("with_mesh", [True, False])
def test_render_shape_outputs(with_mesh):
    shape = two_box_shape(with_mesh)
    cfg = RenderConfig(image_size=64, point_radius=0.03)
    views = render_shape(shape, cfg)
    v, s, n = 10, 64, shape.num_points
    assert views.images.shape == (v, s, s, 3) and views.images.dtype == np.uint8
    assert views.depth.shape == (v, s, s) and views.depth.dtype == np.float32
    assert views.pixel_labels.shape == (v, s, s) and views.pixel_labels.dtype == np.int16
    assert views.point_uv.shape == (v, n, 2) and views.point_visible.shape == (v, n)
    bg = ~views.shape_masks
    assert bg.any() and (~bg).any()
    assert (views.images[bg] == 255).all() and (views.pixel_labels[bg] == -1).all()
    assert (views.images[~bg] < 255).all()  # the shaded surface never reaches white
    assert set(np.unique(views.pixel_labels[~bg])) == {0, 1}
    # The part seen at a visible point's pixel is mostly the point's own part (silhouette
    # points may see background: their pixel centre misses the surface).
    vv, nn = np.nonzero(views.point_visible)
    uv = views.point_uv[vv, nn].astype(int)
    seen = views.pixel_labels[vv, uv[:, 1], uv[:, 0]]
    assert (seen >= 0).mean() > 0.8
    assert (seen == shape.labels[nn])[seen >= 0].mean() > 0.97
    # Every point is visible in some view of this convex-ish shape, and views differ.
    assert views.point_visible.any(0).mean() > 0.95
    assert 0.2 < views.point_visible.mean() < 0.8


def test_mesh_without_face_labels_takes_the_nearest_point_labels():
    shape = two_box_shape(True)
    truth = render_shape(shape, RenderConfig(image_size=48)).pixel_labels
    shape.mesh = Mesh(shape.mesh.vertices, shape.mesh.faces, None)
    transferred = render_shape(shape, RenderConfig(image_size=48)).pixel_labels
    assert (transferred == truth).mean() > 0.98
    shape.labels = None
    unlabelled = render_shape(shape, RenderConfig(image_size=48)).pixel_labels
    assert (unlabelled == -1).all()


def test_backend_resolution(monkeypatch):
    assert resolve_backend("torch") == "torch"
    with pytest.raises(ValueError, match="pytorch3d"):
        resolve_backend("pytorch3d")
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("opengl")
    monkeypatch.setattr(renderer, "embree_available", lambda: False)
    assert resolve_backend("auto") == "torch"
    with pytest.raises(ValueError, match="embreex"):
        resolve_backend("embree")
    # auto without embreex still renders (torch rasteriser).
    views = render_shape(two_box_shape(True), RenderConfig(image_size=32))
    assert views.shape_masks.any()
    monkeypatch.setattr(renderer, "embree_available", lambda: True)
    assert resolve_backend("auto") == "embree"


def test_bad_mesh_raises():
    shape = two_box_shape(True)
    shape.mesh = Mesh(shape.mesh.vertices, shape.mesh.faces + 1000, None)
    with pytest.raises(ValueError, match="faces index"):
        render_shape(shape, RenderConfig(image_size=16))
    with pytest.raises(ValueError, match="point_radius"):
        splat_points(np.zeros((3, 3), np.float32), make_cameras(RenderConfig(image_size=16)), 0.0)
