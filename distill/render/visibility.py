"""Visibility of the N student points in every view, and the slow references it is
checked against.

Meshes
    A point is visible when it projects inside the image and lies at most
    ``depth_tolerance`` behind the surface seen at its pixel, that surface's depth taken on
    the seen face's plane along the point's own ray (``mesh_point_visibility``; the
    pixel-centre depth alone fails on faces seen at grazing angles). Against one exact ray
    per point (``mesh_visibility_reference``) it agrees on ≥ 98.5 % of (view, point) pairs
    at 320² and ≥ 99.9 % away from depth discontinuities.
Point clouds
    2,048 points are too sparse for a depth test against their own splats (holes let
    hidden points through; on slanted surfaces neighbours' disks hide visible ones), so the
    default is hidden-point removal (``render.point_visibility=hpr``,
    ``hidden_point_removal``; the splat depth test ``point_visibility`` is ``depth``).
    Against the mesh's visibility of the same points (``python bench/render.py
    visibility``, 38 PSB shapes, 320²): HPR precision 0.917, recall 0.890, agreement 0.920;
    depth test (radius 0.02) 0.752 / 0.701 / 0.765.

The references (docs/design.md §5.3, for tests) loop over points in plain Python against every
triangle or every point; use tiny inputs.
"""

from __future__ import annotations

import numpy as np

from distill.cameras import project, project_reference
from distill.render.raycast import ray_triangles
from distill.render.splat import MIN_SPLAT_PX
from distill.views import Cameras

HPR_GAMMA = 2.0
"""Hidden-point removal's radius exponent, chosen by measurement (see the module docstring)."""


def _point_pixels(uv: np.ndarray, depth: np.ndarray, s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(V, N) bool inside the image and in front of the camera, and the (V, N) row and
    column of each point's pixel (0 where outside)."""
    with np.errstate(invalid="ignore"):
        col = np.floor(uv[..., 0])
        row = np.floor(uv[..., 1])
        inside = (col >= 0) & (col < s) & (row >= 0) & (row < s) & (depth > 0)
    return inside, np.where(inside, row, 0).astype(np.int64), np.where(inside, col, 0).astype(np.int64)


def _check_vis_inputs(uv: np.ndarray, depth: np.ndarray, depth_map: np.ndarray) -> None:
    if uv.ndim != 3 or uv.shape[2] != 2 or depth.shape != uv.shape[:2]:
        raise ValueError(f"uv {uv.shape} must be (V, N, 2) and depth {depth.shape} (V, N)")
    nv = uv.shape[0]
    if depth_map.ndim != 3 or depth_map.shape[0] != nv or depth_map.shape[1] != depth_map.shape[2]:
        raise ValueError(f"depth_map {depth_map.shape} must be (V, S, S) with V = {nv}")


def point_visibility(uv: np.ndarray, depth: np.ndarray, depth_map: np.ndarray, tolerance: float) -> np.ndarray:
    """Depth test of projected points against the rendered depth at their pixel centre.

    uv: (V, N, 2) pixel coordinates · depth: (V, N) · depth_map: (V, S, S) (``inf`` on
    background) · tolerance: world units → (V, N) bool: inside the image, in front of
    the camera and at most ``tolerance`` behind the surface seen at the point's pixel.
    Exact for splats (a splat is flat across its pixels); for meshes see
    ``mesh_point_visibility``.
    """
    _check_vis_inputs(uv, depth, depth_map)
    inside, row, col = _point_pixels(uv, depth, depth_map.shape[1])
    surface = depth_map[np.arange(len(uv))[:, None], row, col]
    return inside & (depth <= surface + tolerance)


def mesh_point_visibility(
    points: np.ndarray,
    cams: Cameras,
    depth_map: np.ndarray,
    face_id: np.ndarray,
    vertices: np.ndarray,
    faces: np.ndarray,
    tolerance: float,
) -> np.ndarray:
    """Depth test of points against a rendered mesh, along each point's own ray.

    The depth map holds the surface at pixel centres; on a surface seen at a grazing
    angle that differs from the surface under the point by the slope times up to 0.7
    pixel, far more than ``tolerance`` (a 10° elevation camera and a horizontal face:
    0.05–0.1 at 800²). So the surface depth is taken on the plane of the face seen at the
    point's pixel, intersected with the ray through the point itself; that is exact
    whenever the pixel sees the point's own face (or a coplanar neighbour). Where the
    plane is parallel to the ray the pixel-centre depth is used.

    points: (N, 3) · depth_map, face_id: (V, S, S) from the rasteriser → (V, N) bool.
    """
    uv, depth = project(points, cams)
    _check_vis_inputs(uv, depth, depth_map)
    nv = len(cams)
    inside, row, col = _point_pixels(uv, depth, depth_map.shape[1])
    views = np.arange(nv)[:, None]
    surface = depth_map[views, row, col].astype(np.float64)
    fid = face_id[views, row, col]
    seen = inside & (fid >= 0)
    tri = np.asarray(vertices, np.float64)[np.asarray(faces)[fid[seen]]]  # (K, 3, 3)
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    vi = np.broadcast_to(views, fid.shape)[seen]
    eye = cams.eye[vi].astype(np.float64)
    ray = np.asarray(points, np.float64)[np.nonzero(seen)[1]] - eye  # the point sits at t = 1
    den = np.einsum("kj,kj->k", normal, ray)
    num = np.einsum("kj,kj->k", normal, tri[:, 0] - eye)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = num / den
    ok = np.isfinite(t) & (t > 0) & (np.abs(den) > 1e-9 * np.linalg.norm(normal, axis=1) * np.linalg.norm(ray, axis=1))
    plane = surface[seen]
    plane[ok] = t[ok] * depth[seen][ok]  # depth grows linearly with t along one ray
    surface[seen] = plane
    return inside & (depth <= surface + tolerance)


def hidden_point_removal(points: np.ndarray, cams: Cameras, gamma: float = HPR_GAMMA) -> np.ndarray:
    """Visibility of a bare point cloud by hidden-point removal (Katz, Tal, Basri 2007).

    Per view, points are flipped spherically about the camera (``p + 2 (R − |p|) p/|p|``,
    ``R = max|p| · 10^gamma``); the points on the convex hull of the flipped set and the
    camera are the visible ones. Needs no normals, no splat radius and no tolerance.

    points: (N, 3) → (V, N) bool, also requiring the point to land inside the image.
    """
    from scipy.spatial import ConvexHull, QhullError

    points = np.asarray(points, np.float64)
    uv, depth = project(points, cams)
    inside, _, _ = _point_pixels(uv, depth, cams.image_size)
    # Repeated points (clouds padded to a fixed size) share one hull vertex: test unique ones.
    unique, inverse = np.unique(points, axis=0, return_inverse=True)
    out = np.zeros((len(cams), len(unique)), bool)
    if len(unique) < 4:  # no hull in 3D: every point is unoccluded
        return inside
    for v in range(len(cams)):
        rel = unique - cams.eye[v].astype(np.float64)
        norm = np.maximum(np.linalg.norm(rel, axis=1, keepdims=True), 1e-12)
        radius = norm.max() * 10.0**gamma
        flipped = rel + 2.0 * (radius - norm) * rel / norm
        try:
            hull = ConvexHull(np.vstack([flipped, np.zeros((1, 3))]))
        except QhullError:  # degenerate (e.g. all points coplanar with the camera)
            out[v] = True
            continue
        ids = hull.vertices[hull.vertices < len(unique)]
        out[v, ids] = True
    return out[:, inverse.reshape(-1)] & inside


def mesh_visibility_reference(
    points: np.ndarray, vertices: np.ndarray, faces: np.ndarray, cams: Cameras, tolerance: float
) -> np.ndarray:
    """``mesh_point_visibility``'s reference: per point and view, cast the ray from the
    camera through the point itself: visible when it lands inside the image and the first
    surface hit is no more than ``tolerance`` (depth units) in front of the point.

    → (V, N) bool.
    """
    tri = np.asarray(vertices, np.float64)[np.asarray(faces)]
    uv, depth = project_reference(points, cams)
    s = cams.image_size
    out = np.zeros((len(cams), len(points)), bool)
    for v in range(len(cams)):
        eye = cams.eye[v].astype(np.float64)
        for n, p in enumerate(np.asarray(points, np.float64)):
            if not (0 <= uv[v, n, 0] < s and 0 <= uv[v, n, 1] < s and depth[v, n] > 0):
                continue
            t = ray_triangles(eye, p - eye, tri).min()  # the point itself sits at t = 1
            # Depth is proportional to t along one ray: the hit lies (1 − t)·depth in front.
            out[v, n] = (1.0 - min(t, 1.0)) * depth[v, n] <= tolerance
    return out


def splat_visibility_reference(points: np.ndarray, cams: Cameras, radius: float, tolerance: float) -> np.ndarray:
    """``point_visibility``'s reference on splats: point i is visible in a view when it
    lands in the image and no other point more than ``tolerance`` nearer has a disk
    covering i's pixel centre.

    → (V, N) bool.
    """
    s = cams.image_size
    uv, z = project_reference(points, cams)
    out = np.zeros((len(cams), len(points)), bool)
    for v in range(len(cams)):
        r = np.maximum(float(cams.focal[v]) * radius / z[v], MIN_SPLAT_PX)
        for n in range(len(points)):
            if not (0 <= uv[v, n, 0] < s and 0 <= uv[v, n, 1] < s and z[v, n] > 0):
                continue
            cx, cy = np.floor(uv[v, n]) + 0.5
            d2 = (uv[v, :, 0] - cx) ** 2 + (uv[v, :, 1] - cy) ** 2
            occluders = (d2 <= r * r) & (z[v] < z[v, n] - tolerance)
            out[v, n] = not occluders.any()
    return out
