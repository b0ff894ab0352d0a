"""``render_shape``: a rasteriser (chosen by geometry and backend), then the visibility of
the student points, then shading, composed into ``RenderedViews``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from distill.cameras import make_cameras, project
from distill.config import RenderConfig
from distill.records import Mesh, Shape
from distill.render.raycast import embree_available, raycast_mesh_embree
from distill.render.shading import shade_views
from distill.render.splat import splat_points
from distill.render.visibility import hidden_point_removal, mesh_point_visibility, point_visibility
from distill.render.zbuffer import rasterize_mesh_torch
from distill.views import Cameras, RenderedViews

MeshRasterizer = Callable[[np.ndarray, np.ndarray, Cameras], tuple[np.ndarray, np.ndarray]]
"""(vertices (P, 3) float32, faces (F, 3) int, cams) → depth (V, S, S) float32, face_id (V, S, S) int64."""


class Fragments(NamedTuple):
    """What a rasteriser leaves for one shape: per pixel the nearest item (a face of the
    mesh, or a point of the cloud), and per item its normal and part."""

    depth: np.ndarray
    """(V, S, S) float32, ``inf`` on background."""
    item_id: np.ndarray
    """(V, S, S) int64, −1 on background."""
    normals: np.ndarray | None
    """(K, 3) world normals of the K items, any length; None for a cloud without normals."""
    labels: np.ndarray | None
    """(K,) part of each item; None when the shape has no labels."""
    vertices: np.ndarray | None = None
    """The checked mesh, (P, 3) float32, as rasterised; None for a point cloud."""
    faces: np.ndarray | None = None
    """(F, 3) int64; None for a point cloud."""


def resolve_backend(backend: str) -> str:
    """``auto`` → ``embree`` when embreex imports, else ``torch``; checks the others."""
    if backend == "auto":
        return "embree" if embree_available() else "torch"
    if backend == "embree":
        if not embree_available():
            raise ValueError("render.backend=embree but embreex is not installed (pip install embreex, or use torch)")
        return backend
    if backend == "torch":
        return backend
    if backend == "pytorch3d":
        raise ValueError("render.backend=pytorch3d is not supported: pytorch3d cannot be installed here; use auto")
    raise ValueError(f"render.backend={backend!r} is not one of auto, embree, torch")


def mesh_rasterizer(backend: str) -> MeshRasterizer:
    """The mesh rasteriser of ``render.backend``: Embree ray casting or the torch z-buffer."""
    return raycast_mesh_embree if resolve_backend(backend) == "embree" else rasterize_mesh_torch


def _check_mesh(mesh: Mesh) -> tuple[np.ndarray, np.ndarray]:
    vertices = np.asarray(mesh.vertices, np.float32)
    faces = np.asarray(mesh.faces, np.int64)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or len(vertices) == 0:
        raise ValueError(f"mesh vertices must be (V, 3) with V >= 1, got {vertices.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
        raise ValueError(f"mesh faces must be (F, 3) with F >= 1, got {faces.shape}")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise ValueError(f"mesh faces index vertices outside [0, {len(vertices) - 1}]")
    if not np.isfinite(vertices).all():
        raise ValueError("mesh vertices contain NaN or inf")
    return vertices, faces


def _mesh_face_labels(shape: Shape, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray | None:
    """The mesh's face labels, or (when it has none) those of the nearest labelled point."""
    mesh = shape.mesh
    assert mesh is not None
    if mesh.face_labels is not None:
        labels = np.asarray(mesh.face_labels, np.int64)
        if labels.shape != (len(faces),):
            raise ValueError(f"shape {shape.shape_id}: face_labels {labels.shape} != ({len(faces)},)")
        return labels
    if shape.labels is None:
        return None
    from scipy.spatial import cKDTree

    _, nearest = cKDTree(shape.points).query(vertices[faces].mean(1))
    return shape.labels[nearest]


def rasterize(shape: Shape, cfg: RenderConfig, cams: Cameras) -> Fragments:
    """``shape.mesh`` through the rasteriser of ``cfg.backend`` when present, else
    ``shape.points`` splatted with radius ``cfg.point_radius``."""
    if shape.mesh is None:
        depth, point_id = splat_points(shape.points, cams, cfg.point_radius)
        return Fragments(depth, point_id, shape.normals, shape.labels)
    vertices, faces = _check_mesh(shape.mesh)
    depth, face_id = mesh_rasterizer(cfg.backend)(vertices, faces, cams)
    tri = vertices[faces].astype(np.float64)
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    return Fragments(depth, face_id, normals, _mesh_face_labels(shape, vertices, faces), vertices, faces)


def visibility(
    shape: Shape, cfg: RenderConfig, cams: Cameras, frags: Fragments, uv: np.ndarray, depth: np.ndarray
) -> np.ndarray:
    """(V, N) visibility of ``shape.points`` (projected to ``uv``, ``depth``): against the
    mesh along each point's own ray, or for a cloud by ``cfg.point_visibility``."""
    if frags.vertices is not None:
        return mesh_point_visibility(
            shape.points, cams, frags.depth, frags.item_id, frags.vertices, frags.faces, cfg.depth_tolerance
        )
    if cfg.point_visibility == "hpr":
        return hidden_point_removal(shape.points, cams)
    if cfg.point_visibility == "depth":
        return point_visibility(uv, depth, frags.depth, cfg.depth_tolerance)
    raise ValueError(f"render.point_visibility={cfg.point_visibility!r} is not one of hpr, depth")


def pixel_labels(frags: Fragments) -> np.ndarray:
    """(V, S, S) int16 part seen at each pixel, −1 on background or without labels."""
    if frags.labels is None:
        return np.full(frags.depth.shape, -1, np.int16)
    # Index −1 (background) picks the appended −1.
    return np.append(np.asarray(frags.labels, np.int16), np.int16(-1))[frags.item_id]


def render_shape(shape: Shape, cfg: RenderConfig, cams: Cameras | None = None) -> RenderedViews:
    """Render ``shape`` from the views of ``cfg`` (or ``cams``) and test its points' visibility.

    Uses ``shape.mesh`` when present (backend ``cfg.backend``), else splats ``shape.points``.
    → ``RenderedViews`` with V views of ``cfg.image_size``² pixels and N = ``shape.num_points``.
    """
    cams = make_cameras(cfg) if cams is None else cams
    frags = rasterize(shape, cfg, cams)
    uv, depth = project(shape.points, cams)
    return RenderedViews(
        images=shade_views(cams, frags.depth, frags.item_id, frags.normals),
        depth=frags.depth.astype(np.float32),
        pixel_labels=pixel_labels(frags),
        point_uv=uv,
        point_visible=visibility(shape, cfg, cams, frags, uv, depth),
        cameras=cams,
    )
