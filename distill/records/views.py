"""Rendered shapes as batch columns: what the split extraction layout's render tasks hand
its teacher actors (``cluster.passes.extract_stages``), one row a shape.

RENDERED_COLUMNS
    shape_id: string · header: string (JSON of ``shape_header``: shape_id, category,
    part_names, source) · points: (N, 3) float32 · error: string ("" when rendered)
VIEW_COLUMNS + CAMERA_COLUMNS (``views_to_columns``), V views of H×W pixels
    images (V,H,W,3) uint8 · depth (V,H,W) float32 · pixel_labels (V,H,W) int16 ·
    point_uv (V,N,2) float32 · point_visible (V,N) bool · cam_eye (V,3) ·
    cam_world_to_cam (V,4,4) · cam_focal (V,) · cam_elev_azim (V,2)

A shape that failed to render keeps the row's columns with zero views
(``empty_view_columns``), so every row has one schema.
"""

from __future__ import annotations

import json

import numpy as np

from distill.records.shapes import Shape
from distill.views import Cameras, RenderedViews

RENDERED_COLUMNS = ("shape_id", "header", "points", "error")
VIEW_COLUMNS = ("images", "depth", "pixel_labels", "point_uv", "point_visible")
CAMERA_COLUMNS = ("cam_eye", "cam_world_to_cam", "cam_focal", "cam_elev_azim")


def shape_header(shape: Shape) -> str:
    """What the teacher needs of a shape besides its points, as one JSON string."""
    return json.dumps(
        {
            "shape_id": shape.shape_id,
            "category": shape.category,
            "part_names": list(shape.part_names),
            "source": shape.source,
        }
    )


def teacher_shape(header: str, points: np.ndarray) -> Shape:
    """The shape as the teacher sees it: id, category, part names, points (no mesh or labels)."""
    h = json.loads(header)
    return Shape(h["shape_id"], h["category"], h["part_names"], np.asarray(points, np.float32), source=h["source"])


def views_to_columns(views: RenderedViews) -> dict[str, np.ndarray]:
    """``RenderedViews`` → arrays of one row: images (V,H,W,3) uint8 · depth (V,H,W)
    float32 · pixel_labels (V,H,W) int16 · point_uv (V,N,2) float32 · point_visible (V,N)
    bool · the cameras' eye (V,3), world_to_cam (V,4,4), focal (V,), elev_azim (V,2)."""
    c = views.cameras
    return {
        "images": views.images,
        "depth": views.depth,
        "pixel_labels": views.pixel_labels,
        "point_uv": views.point_uv,
        "point_visible": views.point_visible,
        "cam_eye": c.eye,
        "cam_world_to_cam": c.world_to_cam,
        "cam_focal": c.focal,
        "cam_elev_azim": c.elev_azim,
    }


def columns_to_views(cols: dict[str, np.ndarray]) -> RenderedViews:
    """The inverse of ``views_to_columns`` (exact: same dtypes, same values)."""
    images = np.asarray(cols["images"])
    cams = Cameras(
        eye=np.asarray(cols["cam_eye"]),
        world_to_cam=np.asarray(cols["cam_world_to_cam"]),
        focal=np.asarray(cols["cam_focal"]),
        image_size=int(images.shape[1]),
        elev_azim=np.asarray(cols["cam_elev_azim"]),
    )
    return RenderedViews(
        images=images,
        depth=np.asarray(cols["depth"]),
        pixel_labels=np.asarray(cols["pixel_labels"]),
        point_uv=np.asarray(cols["point_uv"]),
        point_visible=np.asarray(cols["point_visible"]),
        cameras=cams,
    )


def empty_view_columns(image_size: int, num_points: int) -> dict[str, np.ndarray]:
    """Zero-view placeholders of a shape that failed to render (rows keep one schema)."""
    s, n = image_size, max(num_points, 0)
    return {
        "images": np.zeros((0, s, s, 3), np.uint8),
        "depth": np.zeros((0, s, s), np.float32),
        "pixel_labels": np.zeros((0, s, s), np.int16),
        "point_uv": np.zeros((0, n, 2), np.float32),
        "point_visible": np.zeros((0, n), bool),
        "cam_eye": np.zeros((0, 3), np.float32),
        "cam_world_to_cam": np.zeros((0, 4, 4), np.float32),
        "cam_focal": np.zeros(0, np.float32),
        "cam_elev_azim": np.zeros((0, 2), np.float32),
    }
