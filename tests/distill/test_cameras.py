"""Cameras: view sets, the look-at convention, projection against a per-point reference."""

from __future__ import annotations

import numpy as np
import pytest

from distill.cameras import (
    PARTSLIP_VIEWS,
    cameras_from_angles,
    fibonacci_directions,
    focal_length,
    look_at,
    make_cameras,
    pixel_rays,
    project,
    project_reference,
    view_angles,
)
from distill.config import RenderConfig


def _is_rotation(m: np.ndarray) -> bool:
    r = m[:, :3, :3].astype(np.float64)
    eye = np.einsum("vij,vkj->vik", r, r)
    return np.allclose(eye, np.eye(3), atol=1e-5) and np.allclose(np.linalg.det(r), 1.0, atol=1e-5)


def test_partslip_preset_matches_design():
    cams = make_cameras(RenderConfig(image_size=800))
    assert len(cams) == 10 and cams.image_size == 800
    np.testing.assert_allclose(cams.elev_azim, np.array(PARTSLIP_VIEWS, np.float32))
    np.testing.assert_allclose(np.linalg.norm(cams.eye, axis=1), 2.2, rtol=1e-6)
    # (10, 0): in front (+z), slightly above.
    e = np.radians(10)
    np.testing.assert_allclose(cams.eye[0], 2.2 * np.array([0, np.sin(e), np.cos(e)]), atol=1e-6)
    # (10, 90): on +x; (−20, ...): below.
    assert cams.eye[1, 0] == pytest.approx(2.2 * np.cos(e), rel=1e-6)
    assert (cams.eye[7:, 1] < 0).all()
    assert _is_rotation(cams.world_to_cam)
    np.testing.assert_allclose(cams.focal, 400 / np.tan(np.radians(30)), rtol=1e-6)  # fov 60°


def test_ring_and_sphere_presets():
    ring = make_cameras(RenderConfig(views="ring", num_views=6, image_size=64))
    assert len(ring) == 6
    np.testing.assert_allclose(ring.elev_azim[:, 0], 20.0)
    np.testing.assert_allclose(ring.elev_azim[:, 1], np.arange(6) * 60.0)
    sph = make_cameras(RenderConfig(views="sphere", num_views=20, image_size=64, distance=3.0))
    assert len(sph) == 20 and _is_rotation(sph.world_to_cam)
    np.testing.assert_allclose(np.linalg.norm(sph.eye, axis=1), 3.0, rtol=1e-5)
    d = fibonacci_directions(20)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0)
    # Evenly spread: the mean direction is near 0 and no two directions nearly coincide.
    assert np.linalg.norm(d.mean(0)) < 0.05
    cos = d @ d.T - 2 * np.eye(20)
    assert cos.max() < np.cos(np.radians(25))
    # The eyes follow the Fibonacci directions (elevation/azimuth round trip).
    np.testing.assert_allclose(sph.eye / 3.0, d, atol=1e-5)


def test_origin_projects_to_centre_and_axes_are_not_mirrored():
    cams = make_cameras(RenderConfig(image_size=100))
    uv, depth = project(np.zeros((1, 3), np.float32), cams)
    np.testing.assert_allclose(uv[:, 0], 50.0, atol=1e-4)
    np.testing.assert_allclose(depth[:, 0], 2.2, rtol=1e-6)
    # World up (+y) is image up (smaller row) in every view.
    uv_up, _ = project(np.array([[0, 0.2, 0]], np.float32), cams)
    assert (uv_up[:, 0, 1] < 50).all()
    # Camera at azimuth 0 sits on +z: +x is image right; at azimuth 90 (on +x): −z is right.
    uv_x, _ = project(np.array([[0.2, 0, 0], [0, 0, -0.2]], np.float32), cams)
    assert uv_x[0, 0, 0] > 50 and uv_x[1, 1, 0] > 50


def test_focal_from_fov_puts_the_fov_edge_on_the_image_border():
    cams = cameras_from_angles(np.array([[0.0, 0.0]]), 2.0, 64, 60.0)
    # A point on the camera's x axis at the half-fov angle lands on column 64.
    x = 2.0 * np.tan(np.radians(30))
    uv, _ = project(np.array([[x, 0, 0]], np.float32), cams)
    assert uv[0, 0, 0] == pytest.approx(64.0, abs=1e-3)
    assert focal_length(64, 90.0) == pytest.approx(32.0)


def test_project_matches_reference():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1, 1, (200, 3)).astype(np.float32)
    cams = make_cameras(RenderConfig(views="sphere", num_views=7, image_size=320))
    uv, depth = project(pts, cams)
    uv_ref, depth_ref = project_reference(pts, cams)
    np.testing.assert_allclose(uv, uv_ref, atol=2e-3)
    np.testing.assert_allclose(depth, depth_ref, atol=1e-5)


def test_pixel_rays_pass_through_projected_points():
    cams = make_cameras(RenderConfig(image_size=32))
    origins, dirs = pixel_rays(cams)
    assert dirs.shape == (10, 32, 32, 3)
    # The point at depth 1.7 along the ray of pixel (row 5, col 20) projects onto that pixel centre.
    p = origins[:, None, :] + 1.7 * dirs[:, 5, 20][:, None, :]
    for v in range(10):
        uv, depth = project(p[v], cams)
        np.testing.assert_allclose(uv[v, 0], [20.5, 5.5], atol=1e-3)
        assert depth[v, 0] == pytest.approx(1.7, rel=1e-5)


def test_look_at_from_the_pole_is_a_rotation():
    m = look_at(np.array([[0.0, 3.0, 0.0], [0.0, -3.0, 0.0]]))
    assert _is_rotation(m.astype(np.float32))
    uv, depth = project(np.zeros((1, 3), np.float32), cameras_from_angles(np.array([[90.0, 0.0]]), 3.0, 16, 50))
    np.testing.assert_allclose(uv[0, 0], [8, 8], atol=1e-4)
    assert depth[0, 0] == pytest.approx(3.0)


def test_points_behind_the_camera_get_nan_uv():
    cams = cameras_from_angles(np.array([[0.0, 0.0]]), 2.0, 16, 50)
    uv, depth = project(np.array([[0, 0, 3.0]], np.float32), cams)
    assert np.isnan(uv).all() and depth[0, 0] < 0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="points"):
        project(np.zeros((3, 2)), make_cameras(RenderConfig(image_size=16)))
    with pytest.raises(ValueError, match="views"):
        view_angles("cube", 4)
    with pytest.raises(ValueError, match="elev_azim"):
        cameras_from_angles(np.zeros((0, 2)), 2.0, 16, 50)
    with pytest.raises(ValueError, match="fov_deg"):
        focal_length(16, 180.0)
