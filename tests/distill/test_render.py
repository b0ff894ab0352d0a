"""Renderer: fast kernels against the slow references, known visibility cases, outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

import distill.render as render
from distill.cameras import PARTSLIP_VIEWS, cameras_from_angles, make_cameras, project
from distill.config import RenderConfig
from distill.records import Mesh, Shape
from distill.render import (
    hidden_point_removal,
    mesh_point_visibility,
    point_visibility,
    rasterize_mesh_torch,
    raycast_mesh_embree,
    render_shape,
    resolve_backend,
    splat_points,
)
from distill.render_reference import (
    mesh_visibility_reference,
    raycast_mesh_reference,
    splat_points_reference,
    splat_visibility_reference,
)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Render as a Ray CPU task does, on one torch thread: the kernels are many small ops,
    and on a busy machine two threads' synchronisation made them up to 30× slower."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


needs_embree = pytest.mark.skipif(not render.embree_available(), reason="embreex is not installed")


def random_mesh(seed: int) -> trimesh.Trimesh:
    """Three overlapping random boxes / spheres inside the unit sphere: occlusion, grazing
    faces, silhouettes and interpenetration, in a few hundred faces."""
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(3):
        if rng.random() < 0.5:
            m = trimesh.creation.box(extents=rng.uniform(0.2, 0.8, 3))
        else:
            m = trimesh.creation.icosphere(subdivisions=1, radius=rng.uniform(0.15, 0.4))
        m.apply_translation(rng.uniform(-0.35, 0.35, 3))
        parts.append(m)
    return trimesh.util.concatenate(parts)


def two_box_shape(with_mesh: bool = True, num_points: int = 600) -> Shape:
    """A 'table': a flat top (part 0) on a thick post (part 1), with surface samples."""
    top = trimesh.creation.box(extents=[1.2, 0.15, 0.8])
    # Well below the 10°-elevation cameras' height (0.38): its top is not seen edge-on.
    top.apply_translation([0, 0.1, 0])
    post = trimesh.creation.box(extents=[0.25, 0.6, 0.25])
    post.apply_translation([0, -0.27, 0])
    mesh = trimesh.util.concatenate([top, post])
    face_labels = np.r_[np.zeros(len(top.faces)), np.ones(len(post.faces))].astype(np.int32)
    pts, fi = trimesh.sample.sample_surface(mesh, num_points, seed=0)
    return Shape(
        "two_box",
        "Table",
        ["top", "post"],
        pts.astype(np.float32),
        normals=mesh.face_normals[fi].astype(np.float32),
        labels=face_labels[fi],
        mesh=Mesh(mesh.vertices.astype(np.float32), mesh.faces.astype(np.int32), face_labels) if with_mesh else None,
    )


def _rasterisers():
    out = [("torch", rasterize_mesh_torch)]
    if render.embree_available():
        out.append(("embree", raycast_mesh_embree))
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_mesh_rasterisers_match_reference_raycast(seed):
    m = random_mesh(seed)
    v, f = m.vertices.astype(np.float32), m.faces
    cams = cameras_from_angles(np.array(PARTSLIP_VIEWS[::3]), 2.2, 24, 50)
    depth_ref, face_ref = raycast_mesh_reference(v, f, cams)
    assert (face_ref >= 0).mean() > 0.1  # the shape is on screen
    for name, raster in _rasterisers():
        depth, face = raster(v, f, cams)
        same = face == face_ref
        assert same.mean() >= 0.995, name
        np.testing.assert_allclose(depth[same & (face >= 0)], depth_ref[same & (face >= 0)], atol=1e-5, err_msg=name)
        assert np.isinf(depth[face < 0]).all()


@needs_embree
def test_embree_and_torch_rasterisers_agree():
    m = random_mesh(2)
    v, f = m.vertices.astype(np.float32), m.faces
    cams = make_cameras(RenderConfig(image_size=96))
    d_e, f_e = raycast_mesh_embree(v, f, cams)
    d_t, f_t = rasterize_mesh_torch(v, f, cams)
    assert (f_e == f_t).mean() > 0.999
    both = (f_e == f_t) & (f_e >= 0)
    np.testing.assert_allclose(d_e[both], d_t[both], atol=1e-4)


def test_splat_matches_reference():
    rng = np.random.default_rng(3)
    pts = rng.uniform(-0.6, 0.6, (150, 3)).astype(np.float32)
    cams = cameras_from_angles(np.array(PARTSLIP_VIEWS[:3]), 2.2, 24, 50)
    depth, pid = splat_points(pts, cams, 0.05)
    depth_ref, pid_ref = splat_points_reference(pts, cams, 0.05)
    assert (pid >= 0).mean() > 0.2
    np.testing.assert_array_equal(pid >= 0, pid_ref >= 0)
    np.testing.assert_allclose(depth[pid >= 0], depth_ref[pid >= 0], atol=1e-5)
    assert (pid == pid_ref).mean() > 0.999


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
    if backend == "embree" and not render.embree_available():
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
    if backend == "embree" and not render.embree_available():
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


def test_mesh_and_splat_visibility_roughly_agree():
    mesh_vis = render_shape(two_box_shape(True), RenderConfig(image_size=96, fov_deg=50.0)).point_visible
    pts_vis = render_shape(
        two_box_shape(False), RenderConfig(image_size=96, point_radius=0.03, fov_deg=50.0)
    ).point_visible
    assert (mesh_vis == pts_vis).mean() > 0.9


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
    monkeypatch.setattr(render, "embree_available", lambda: False)
    assert resolve_backend("auto") == "torch"
    with pytest.raises(ValueError, match="embreex"):
        resolve_backend("embree")
    # auto without embreex still renders (torch rasteriser).
    views = render_shape(two_box_shape(True), RenderConfig(image_size=32))
    assert views.shape_masks.any()
    monkeypatch.setattr(render, "embree_available", lambda: True)
    assert resolve_backend("auto") == "embree"


def test_bad_mesh_raises():
    shape = two_box_shape(True)
    shape.mesh = Mesh(shape.mesh.vertices, shape.mesh.faces + 1000, None)
    with pytest.raises(ValueError, match="faces index"):
        render_shape(shape, RenderConfig(image_size=16))
    with pytest.raises(ValueError, match="point_radius"):
        splat_points(np.zeros((3, 3), np.float32), make_cameras(RenderConfig(image_size=16)), 0.0)
