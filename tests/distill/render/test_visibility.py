"""Visibility of the student points: fast tests against the slow references, known cases."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from distill.cameras import cameras_from_angles, make_cameras, project
from distill.config import RenderConfig
from distill.records import Mesh, Shape
from distill.render.raycast import embree_available
from distill.render.renderer import render_shape
from distill.render.splat import splat_points
from distill.render.visibility import (
    hidden_point_removal,
    mesh_point_visibility,
    mesh_visibility_reference,
    point_visibility,
    splat_visibility_reference,
)
from distill.render.zbuffer import rasterize_mesh_torch
from tests.distill.render.shapes import random_mesh, two_box_shape


@pytest.mark.parametrize("seed", [0, 4])
def test_mesh_visibility_matches_per_point_ray_reference(seed):
    m = random_mesh(seed)
    v, f = m.vertices.astype(np.float32), m.faces
    pts = trimesh.sample.sample_surface(m, 400, seed=seed)[0].astype(np.float32)
    # fov 50°: the object spans more pixels, so fewer points sit on depth discontinuities.
    cams = make_cameras(RenderConfig(image_size=320, fov_deg=50.0))
    depth, face = rasterize_mesh_torch(v, f, cams)
    fast = mesh_point_visibility(pts, cams, depth, face, v, f, 0.02)
    ref = mesh_visibility_reference(pts, v, f, cams, 0.02)
    assert 0.1 < ref.mean() < 0.9
    # Depth discontinuities: the 3×3 pixels around the point see background or span a
    # depth jump; there the pixel and the point's own ray may see different surfaces.
    uv, _ = project(pts, cams)
    col = np.clip(np.floor(uv[..., 0]).astype(int), 1, 318)
    row = np.clip(np.floor(uv[..., 1]).astype(int), 1, 318)
    views = np.arange(len(cams))[:, None]
    nb = np.stack([depth[views, row + dy, col + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    edge = ~np.isfinite(nb).all(0) | (nb.max(0) - nb.min(0) > 0.05)
    assert (fast == ref).mean() >= 0.985
    assert (fast == ref)[~edge].mean() >= 0.999


def test_splat_visibility_matches_reference():
    rng = np.random.default_rng(5)
    # A noisy sphere shell: every point is occluded in some views.
    d = rng.normal(size=(600, 3))
    pts = (0.7 * d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32)
    cams = make_cameras(RenderConfig(image_size=64))
    depth, _ = splat_points(pts, cams, 0.05)
    uv, z = project(pts, cams)
    fast = point_visibility(uv, z, depth, 0.02)
    ref = splat_visibility_reference(pts, cams, 0.05, 0.02)
    assert 0.2 < ref.mean() < 0.8
    assert (fast == ref).mean() >= 0.999


def test_hidden_point_removal_on_a_sphere_shell():
    rng = np.random.default_rng(6)
    d = rng.normal(size=(2000, 3))
    pts = (0.7 * d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32)
    cams = make_cameras(RenderConfig(image_size=128))
    vis = hidden_point_removal(pts, cams)
    # The exact answer for a sphere: the cap facing the camera, |p|² < p · eye.
    exact = np.einsum("nk,vk->vn", pts, cams.eye) > 0.49
    assert (vis == exact).mean() > 0.97
    # Points on the far side (well beyond the cap's rim) are never visible.
    far = np.einsum("nk,vk->vn", pts, cams.eye) < 0.0
    assert not vis[far].any()
    # A cloud padded with repeats: every copy of a point gets the point's visibility.
    padded = np.r_[pts, pts[:500]]
    vis_padded = hidden_point_removal(padded, cams)
    np.testing.assert_array_equal(vis_padded[:, 2000:], vis_padded[:, :500])
    assert (vis_padded[:, :2000] == vis).mean() > 0.99


def _plane_shape(probes: np.ndarray, with_mesh: bool) -> Shape:
    """A 1.6 × 1.6 square at z = 0 facing +z, as two triangles or a dense point grid, plus probes."""
    g = np.linspace(-0.8, 0.8, 41)
    grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    plane_pts = np.c_[grid, np.zeros(len(grid))]
    pts = np.r_[probes, plane_pts].astype(np.float32)
    normals = np.tile([0.0, 0.0, 1.0], (len(pts), 1)).astype(np.float32)
    mesh = Mesh(
        np.array([[-0.8, -0.8, 0], [0.8, -0.8, 0], [0.8, 0.8, 0], [-0.8, 0.8, 0]], np.float32),
        np.array([[0, 1, 2], [0, 2, 3]], np.int32),
        np.zeros(2, np.int32),
    )
    return Shape(
        "plane", "x", ["plane"], pts, normals=normals, labels=np.zeros(len(pts)), mesh=mesh if with_mesh else None
    )


@pytest.mark.parametrize("backend", ["embree", "torch", "points"])
def test_point_in_front_of_a_plane_is_visible_and_behind_it_is_not(backend):
    if backend == "embree" and not embree_available():
        pytest.skip("embreex is not installed")
    probes = np.array([[0.1, 0.2, 0.15], [0.1, 0.2, -0.15], [-0.3, 0.1, 0.0], [0.0, 0.0, -0.5]])
    shape = _plane_shape(probes, with_mesh=backend != "points")
    cfg = RenderConfig(image_size=128, backend="torch" if backend == "points" else backend, point_radius=0.03)
    cams = cameras_from_angles(np.array([[0.0, 0.0], [20.0, 30.0], [0.0, 180.0]]), 2.2, 128, 50)
    views = render_shape(shape, cfg, cams)
    vis = views.point_visible
    # From the front (views 0, 1): in front and on the plane visible, behind hidden.
    assert vis[:2, 0].all() and vis[:2, 2].all()
    assert not vis[:2, 1].any() and not vis[:2, 3].any()
    # From behind (view 2) the roles swap.
    assert not vis[2, 0] and vis[2, 1] and vis[2, 3]
    # The plane's own grid is visible from the front wherever it lands in the image.
    uv = views.point_uv[0, len(probes) :]
    in_image = ((uv >= 0) & (uv < 128)).all(1)
    assert vis[0, len(probes) :][in_image].mean() > 0.99


@pytest.mark.parametrize("backend", ["embree", "torch"])
def test_cube_far_side_is_hidden(backend):
    if backend == "embree" and not embree_available():
        pytest.skip("embreex is not installed")
    cube = trimesh.creation.box(extents=[1.0, 1.0, 1.0])
    pts, fi = trimesh.sample.sample_surface(cube, 3000, seed=1)
    normal = cube.face_normals[fi]
    shape = Shape("cube", "x", ["cube"], pts, mesh=Mesh(cube.vertices.astype(np.float32), cube.faces.astype(np.int32)))
    cams = cameras_from_angles(np.array([[0.0, 0.0], [40.0, 0.0]]), 2.2, 200, 50)
    vis = render_shape(shape, RenderConfig(image_size=200, backend=backend), cams).point_visible
    front, back, top = normal[:, 2] > 0.9, normal[:, 2] < -0.9, normal[:, 1] > 0.9
    bottom = normal[:, 1] < -0.9
    assert vis[0, front].all() and not vis[0, back].any()
    assert vis[1, front].all() and vis[1, top].all()
    # From above, hidden faces show only their rims within the tolerance of a visible face.
    assert not vis[1, back & (pts[:, 1] < 0.45)].any() and not vis[1, bottom & (pts[:, 2] < 0.45)].any()
    # Seen straight on, the side faces hide behind the front face (up to the tolerance band).
    sides = ~front & ~back
    assert vis[0, sides].mean() < 0.05


def test_mesh_and_splat_visibility_roughly_agree():
    mesh_vis = render_shape(two_box_shape(True), RenderConfig(image_size=96, fov_deg=50.0)).point_visible
    pts_vis = render_shape(
        two_box_shape(False), RenderConfig(image_size=96, point_radius=0.03, fov_deg=50.0)
    ).point_visible
    assert (mesh_vis == pts_vis).mean() > 0.9
