"""Slow, obviously correct references for the renderer (DESIGN §5.3); for tests only.

Every function loops over pixels or points in plain Python and tests each against every
triangle (Möller–Trumbore) or every point, so there is no z-buffer packing, no bucketing
and no window cropping to get wrong. Use tiny images and meshes: cost is O(V·S²·F).
"""

from __future__ import annotations

import numpy as np

from distill.views import Cameras


def camera_basis(eye: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right, up and forward unit vectors of a camera at ``eye`` looking at the origin, y up."""
    forward = -np.asarray(eye, np.float64)
    forward /= np.linalg.norm(forward)
    up = np.array([0.0, 1.0, 0.0])
    if abs(forward @ up) > 1.0 - 1e-6:
        up = np.array([0.0, 0.0, 1.0])
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    return right, np.cross(right, forward), forward


def project_reference(points: np.ndarray, cams: Cameras) -> tuple[np.ndarray, np.ndarray]:
    """Per point and view: (x, y, depth) on the camera's own basis, then the pinhole.

    points: (N, 3) → uv: (V, N, 2) float64 · depth: (V, N) float64.
    """
    uv = np.zeros((len(cams), len(points), 2))
    depth = np.zeros((len(cams), len(points)))
    for v in range(len(cams)):
        eye = cams.eye[v].astype(np.float64)
        right, up, forward = camera_basis(eye)
        f = float(cams.focal[v])
        for n, p in enumerate(np.asarray(points, np.float64)):
            rel = p - eye
            z = rel @ forward
            uv[v, n] = (f * (rel @ right) / z + cams.image_size / 2, -f * (rel @ up) / z + cams.image_size / 2)
            depth[v, n] = z
    return uv, depth


def ray_triangles(origin: np.ndarray, direction: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Möller–Trumbore: parameter ``t`` of one ray's hit with each triangle (``inf`` on a miss).

    origin, direction: (3,) · tri: (F, 3, 3) → (F,) float64.
    """
    v0, v1, v2 = tri[:, 0], tri[:, 1], tri[:, 2]
    e1, e2 = v1 - v0, v2 - v0
    p = np.cross(direction, e2)
    det = np.einsum("fk,fk->f", e1, p)
    ok = np.abs(det) > 1e-12
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    tvec = origin - v0
    u = np.einsum("fk,fk->f", tvec, p) * inv
    q = np.cross(tvec, e1)
    w = (q @ direction) * inv
    t = np.einsum("fk,fk->f", e2, q) * inv
    hit = ok & (u >= 0) & (w >= 0) & (u + w <= 1) & (t > 1e-9)
    return np.where(hit, t, np.inf)


def raycast_mesh_reference(vertices: np.ndarray, faces: np.ndarray, cams: Cameras) -> tuple[np.ndarray, np.ndarray]:
    """For every pixel, the nearest triangle its centre ray hits.

    → depth: (V, S, S) float64 (``inf`` background) · face_id: (V, S, S) int64 (−1).
    """
    s = cams.image_size
    tri = np.asarray(vertices, np.float64)[np.asarray(faces)]
    depth = np.full((len(cams), s, s), np.inf)
    face_id = np.full((len(cams), s, s), -1, np.int64)
    for v in range(len(cams)):
        eye = cams.eye[v].astype(np.float64)
        right, up, forward = camera_basis(eye)
        f = float(cams.focal[v])
        for i in range(s):
            for j in range(s):
                # Ray through the pixel centre, scaled so that its component along the
                # view axis is 1: the hit parameter is then the depth.
                d = forward + right * (j + 0.5 - s / 2) / f + up * -(i + 0.5 - s / 2) / f
                t = ray_triangles(eye, d, tri)
                k = int(np.argmin(t))
                if np.isfinite(t[k]):
                    depth[v, i, j], face_id[v, i, j] = t[k], k
    return depth, face_id


def mesh_visibility_reference(
    points: np.ndarray, vertices: np.ndarray, faces: np.ndarray, cams: Cameras, tolerance: float
) -> np.ndarray:
    """Per point and view, cast the ray from the camera through the point itself: visible
    when it lands inside the image and the first surface hit is no more than
    ``tolerance`` (depth units) in front of the point.

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


def splat_points_reference(points: np.ndarray, cams: Cameras, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """For every pixel, the nearest point whose disk (radius projected to pixels, at least
    ``MIN_SPLAT_PX``) covers the pixel centre.

    → depth: (V, S, S) float64 · point_id: (V, S, S) int64.
    """
    from distill.render import MIN_SPLAT_PX

    s = cams.image_size
    uv, z = project_reference(points, cams)
    depth = np.full((len(cams), s, s), np.inf)
    point_id = np.full((len(cams), s, s), -1, np.int64)
    for v in range(len(cams)):
        r = np.maximum(float(cams.focal[v]) * radius / z[v], MIN_SPLAT_PX)
        for i in range(s):
            for j in range(s):
                d2 = (uv[v, :, 0] - (j + 0.5)) ** 2 + (uv[v, :, 1] - (i + 0.5)) ** 2
                cand = np.nonzero((d2 <= r * r) & (z[v] > 0))[0]
                if len(cand):
                    k = cand[np.argmin(z[v, cand])]
                    depth[v, i, j], point_id[v, i, j] = z[v, k], k
    return depth, point_id


def splat_visibility_reference(points: np.ndarray, cams: Cameras, radius: float, tolerance: float) -> np.ndarray:
    """Point i is visible in a view when it lands in the image and no other point more than
    ``tolerance`` nearer has a disk covering i's pixel centre.

    → (V, N) bool.
    """
    from distill.render import MIN_SPLAT_PX

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


__all__ = [
    "camera_basis",
    "mesh_visibility_reference",
    "project_reference",
    "ray_triangles",
    "raycast_mesh_reference",
    "splat_points_reference",
    "splat_visibility_reference",
]
