"""Camera sets and the pinhole projection shared by the renderer, visibility and tests.

Conventions (match pytorch3d's ``look_at_view_transform``, which PartSLIP used):

- World up is **+y** (ShapeNet and PSB shapes are y-up). A camera at elevation ``e`` and
  azimuth ``a`` (degrees) sits at ``distance · (cos e · sin a, sin e, cos e · cos a)``:
  azimuth 0 looks from +z, azimuth 90 from +x, positive elevation looks from above.
- Camera space is OpenGL's: the camera looks down −z, x is right, y is up. ``depth`` is
  the distance along the view axis (``−z_cam``), positive in front of the camera.
- Pixels: ``u`` = column, ``v`` = row (rows grow downwards), the centre of pixel
  ``(row i, col j)`` is ``(u, v) = (j + 0.5, i + 0.5)``; a point lies in pixel
  ``(floor(v), floor(u))``. Focal length in pixels: ``(S / 2) / tan(fov / 2)``.
"""

from __future__ import annotations

import numpy as np

from distill.config import RenderConfig
from distill.views import Cameras

# PartSLIP's 10 views, (elevation, azimuth) in degrees (docs/design.md §3).
PARTSLIP_VIEWS: tuple[tuple[float, float], ...] = (
    (10, 0),
    (10, 90),
    (10, 180),
    (10, 270),
    (40, 0),
    (40, 120),
    (40, 240),
    (-20, 60),
    (-20, 180),
    (-20, 300),
)

RING_ELEVATION_DEG = 20.0
WORLD_UP = np.array([0.0, 1.0, 0.0])


def look_at(eye: np.ndarray, target: np.ndarray | None = None, up: np.ndarray = WORLD_UP) -> np.ndarray:
    """World-to-camera matrices of cameras at ``eye`` looking at ``target``.

    eye: (V, 3) · target: (3,) (default: the origin) → (V, 4, 4) float64. When the view
    direction is parallel to ``up`` (a camera straight above or below) +z serves as up
    instead, so the matrix is always a rotation.
    """
    eye = np.asarray(eye, np.float64)
    if eye.ndim != 2 or eye.shape[1] != 3:
        raise ValueError(f"eye must be (V, 3), got {eye.shape}")
    target = np.zeros(3) if target is None else np.asarray(target, np.float64)
    forward = target - eye
    norm = np.linalg.norm(forward, axis=1, keepdims=True)
    if (norm < 1e-12).any():
        raise ValueError("eye coincides with target for some camera")
    forward /= norm
    ups = np.broadcast_to(np.asarray(up, np.float64), eye.shape).copy()
    parallel = np.abs(forward @ np.asarray(up, np.float64)) > 1.0 - 1e-6
    ups[parallel] = [0.0, 0.0, 1.0]
    right = np.cross(forward, ups)
    right /= np.linalg.norm(right, axis=1, keepdims=True)
    true_up = np.cross(right, forward)
    # Rows of R are the camera axes in world coordinates; the camera looks down −z.
    rot = np.stack([right, true_up, -forward], axis=1)  # (V, 3, 3)
    mat = np.zeros((len(eye), 4, 4))
    mat[:, :3, :3] = rot
    mat[:, :3, 3] = -np.einsum("vij,vj->vi", rot, eye)
    mat[:, 3, 3] = 1.0
    return mat


def focal_length(image_size: int, fov_deg: float) -> float:
    """Focal length in pixels of a square image of ``image_size`` pixels and field of view ``fov_deg``."""
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"fov_deg={fov_deg} must be in (0, 180)")
    return float(image_size / 2.0 / np.tan(np.radians(fov_deg) / 2.0))


def cameras_from_angles(elev_azim: np.ndarray, distance: float, image_size: int, fov_deg: float) -> Cameras:
    """Cameras at ``distance`` from the origin looking at it.

    elev_azim: (V, 2) degrees → ``Cameras`` with V views.
    """
    elev_azim = np.asarray(elev_azim, np.float64)
    if elev_azim.ndim != 2 or elev_azim.shape[1] != 2 or len(elev_azim) == 0:
        raise ValueError(f"elev_azim must be (V, 2) with V >= 1, got {elev_azim.shape}")
    if distance <= 0:
        raise ValueError(f"distance={distance} must be > 0")
    e, a = np.radians(elev_azim[:, 0]), np.radians(elev_azim[:, 1])
    eye = distance * np.stack([np.cos(e) * np.sin(a), np.sin(e), np.cos(e) * np.cos(a)], axis=1)
    f = focal_length(image_size, fov_deg)
    return Cameras(
        eye=eye.astype(np.float32),
        world_to_cam=look_at(eye).astype(np.float32),
        focal=np.full(len(eye), f, np.float32),
        image_size=int(image_size),
        elev_azim=elev_azim.astype(np.float32),
    )


def fibonacci_directions(n: int) -> np.ndarray:
    """(n, 3) unit vectors spread evenly over the sphere (Fibonacci lattice, y = up axis)."""
    if n < 1:
        raise ValueError(f"n={n} must be >= 1")
    i = np.arange(n) + 0.5
    y = 1.0 - 2.0 * i / n
    r = np.sqrt(1.0 - y * y)
    theta = np.pi * (1.0 + 5.0**0.5) * i
    return np.stack([r * np.sin(theta), y, r * np.cos(theta)], axis=1)


def view_angles(views: str, num_views: int) -> np.ndarray:
    """(V, 2) (elevation, azimuth) degrees of a named view set: partslip | ring | sphere."""
    if views == "partslip":
        return np.array(PARTSLIP_VIEWS, np.float64)
    if num_views < 1:
        raise ValueError(f"num_views={num_views} must be >= 1")
    if views == "ring":
        azim = 360.0 * np.arange(num_views) / num_views
        return np.stack([np.full(num_views, RING_ELEVATION_DEG), azim], axis=1)
    if views == "sphere":
        d = fibonacci_directions(num_views)
        elev = np.degrees(np.arcsin(np.clip(d[:, 1], -1.0, 1.0)))
        azim = np.degrees(np.arctan2(d[:, 0], d[:, 2])) % 360.0
        return np.stack([elev, azim], axis=1)
    raise ValueError(f"views={views!r} is not one of partslip, ring, sphere")


def make_cameras(cfg: RenderConfig) -> Cameras:
    """The cameras of ``cfg``: ``cfg.views`` at ``cfg.distance``, ``cfg.image_size``², ``cfg.fov_deg``."""
    return cameras_from_angles(view_angles(cfg.views, cfg.num_views), cfg.distance, cfg.image_size, cfg.fov_deg)


def to_camera(points: np.ndarray, cams: Cameras) -> np.ndarray:
    """World points → camera-space points of every view.

    points: (N, 3) → (V, N, 3) float32 (x right, y up, −z forward).
    """
    points = np.asarray(points, np.float32)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be (N, 3), got {points.shape}")
    rot = cams.world_to_cam[:, :3, :3]
    trans = cams.world_to_cam[:, :3, 3]
    return np.einsum("vij,nj->vni", rot, points) + trans[:, None, :]


def project(points: np.ndarray, cams: Cameras) -> tuple[np.ndarray, np.ndarray]:
    """Project world points into every view.

    points: (N, 3) → uv: (V, N, 2) float32 pixel coordinates (u = column, v = row, pixel
    centres at +0.5) · depth: (V, N) float32 distance along the view axis. Points at or
    behind the camera plane get ``uv = nan`` and their (non-positive) depth.
    """
    cam = to_camera(points, cams)
    depth = -cam[..., 2]
    half = cams.image_size / 2.0
    f = cams.focal[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(depth > 0, 1.0 / depth, np.nan)
    u = f * cam[..., 0] * inv + half
    v = -f * cam[..., 1] * inv + half  # rows grow downwards, camera y grows upwards
    uv = np.stack([u, v], axis=-1).astype(np.float32)
    return uv, depth.astype(np.float32)


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
    """``project``'s slow reference (docs/design.md §5.3, for tests): per point and view, (x, y,
    depth) on the camera's own basis, then the pinhole.

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


def pixel_rays(cams: Cameras) -> tuple[np.ndarray, np.ndarray]:
    """One ray through the centre of every pixel.

    → origins: (V, 3) float32 camera positions · directions: (V, S, S, 3) float32 world
    directions, **not** unit length: scaled so that the camera-space z component is −1,
    hence a hit at ray parameter ``t`` has depth exactly ``t``.
    """
    s = cams.image_size
    c = np.arange(s, dtype=np.float32) + 0.5 - s / 2.0
    f = cams.focal[:, None, None]
    x = np.broadcast_to(c[None, None, :] / f, (len(cams), s, s))
    y = np.broadcast_to(-c[None, :, None] / f, (len(cams), s, s))
    d_cam = np.stack([x, y, -np.ones_like(x)], axis=-1)  # (V, S, S, 3)
    rot = cams.world_to_cam[:, :3, :3]  # world → camera; its transpose maps back
    d_world = np.einsum("vji,vhwj->vhwi", rot, d_cam).astype(np.float32)
    return cams.eye.astype(np.float32), d_world
