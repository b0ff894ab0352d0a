"""Surface sampling, normalisation and the Shape builders (distill/sampling.py)."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from distill.records import Mesh, ShapeError
from distill.sampling import (
    apply_transform,
    derive_seed,
    face_areas_normals,
    normalize_transform,
    sample_faces,
    sample_surface,
    shape_from_mesh,
    shape_from_points,
)


def _two_triangles() -> Mesh:
    # Right triangles of area 1 (z = 0) and 3 (z = 5), far apart.
    v = np.array(
        [[0, 0, 0], [2, 0, 0], [0, 1, 0], [0, 0, 5], [3, 0, 5], [0, 2, 5]],
        np.float32,
    )
    return Mesh(v, np.array([[0, 1, 2], [3, 4, 5]], np.int32), np.array([0, 1], np.int32))


def _sphere_mesh(seed: int = 0) -> tuple[trimesh.Trimesh, Mesh]:
    """A slightly irregular closed sphere; face label = face index (so a label names its face)."""
    rng = np.random.default_rng(seed)
    ico = trimesh.creation.icosphere(subdivisions=2)
    v = ico.vertices * rng.uniform(0.8, 1.2, (len(ico.vertices), 1)) * [3.0, 1.0, 2.0] + [5.0, -2.0, 1.0]
    tm = trimesh.Trimesh(v, ico.faces, process=False)
    return tm, Mesh(v.astype(np.float32), ico.faces.astype(np.int32), np.arange(len(ico.faces), dtype=np.int32))


def test_area_weighting_follows_face_areas():
    points, normals, labels = sample_surface(_two_triangles(), 40_000, seed=1)
    share = np.mean(labels == 0)
    # Binomial std at p = 0.25, n = 40k is 0.0022: 0.01 is > 4 sigma.
    assert abs(share - 0.25) < 0.01
    assert np.all(points[labels == 0, 2] == 0.0) and np.allclose(points[labels == 1, 2], 5.0)


def test_points_lie_on_their_labelled_face_and_normals_match():
    tm, mesh = _sphere_mesh()
    points, normals, labels = sample_surface(mesh, 3000, seed=7)
    assert points.shape == (3000, 3) and points.dtype == np.float32 and labels.dtype == np.int64
    # The exact check: each point's distance to the triangle its label names.
    tri = tm.triangles[labels]
    closest = trimesh.triangles.closest_point(tri, points.astype(np.float64))
    assert np.abs(closest - points).max() < 1e-5
    # Independent check: trimesh's closest face agrees except on (measure-zero) shared edges.
    _, _, face = trimesh.proximity.closest_point(tm, points)
    assert np.mean(face == labels) > 0.995
    # Normals: unit length, the face's normal, outward on this closed star-shaped mesh.
    assert np.allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    assert np.allclose(normals, tm.face_normals[labels], atol=1e-5)
    assert np.all(np.einsum("ij,ij->i", normals, points - tm.centroid) > 0)


def test_sampling_is_seeded():
    mesh = _sphere_mesh()[1]
    a = sample_surface(mesh, 500, seed=3)
    b = sample_surface(mesh, 500, seed=3)
    c = sample_surface(mesh, 500, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_sample_without_labels_and_bad_n():
    mesh = _two_triangles()
    mesh.face_labels = None
    _, _, labels = sample_surface(mesh, 10, seed=0)
    assert labels is None
    with pytest.raises(ValueError, match="n=0"):
        sample_surface(mesh, 0, seed=0)


def test_sample_faces_is_the_sampler_of_sample_surface():
    # One sampler serves shapes (sample_surface, float32) and the mesh filters (float64 points).
    mesh = _sphere_mesh()[1]
    v = np.asarray(mesh.vertices, np.float64)
    areas, _ = face_areas_normals(v, mesh.faces)
    face, points = sample_faces(v, np.asarray(mesh.faces), areas, 500, seed=3)
    got, _, labels = sample_surface(mesh, 500, seed=3)
    assert points.dtype == np.float64 and face.shape == (500,)
    assert np.array_equal(face, labels) and np.array_equal(points.astype(np.float32), got)
    with pytest.raises(ValueError, match="zero total area"):
        sample_faces(v, np.asarray(mesh.faces), np.zeros(len(areas)), 10, seed=0)


def test_face_areas_normals_known_values():
    mesh = _two_triangles()
    areas, normals = face_areas_normals(mesh.vertices, mesh.faces)
    assert np.allclose(areas, [1.0, 3.0])
    assert np.allclose(normals, [[0, 0, 1], [0, 0, 1]])


def test_normalize_transform_bbox_centre_and_unit_radius():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(200, 3)) * [5, 1, 2] + [10, -3, 7]
    center, scale = normalize_transform(pts)
    assert np.allclose(center, (pts.min(0) + pts.max(0)) / 2)
    out = apply_transform(pts, center, scale)
    assert out.dtype == np.float32
    assert np.isclose(np.linalg.norm(out, axis=1).max(), 1.0, atol=1e-6)
    # One repeated point: no division by zero, lands at the origin.
    c1, s1 = normalize_transform(np.ones((4, 3)))
    assert s1 == 1.0 and np.allclose(apply_transform(np.ones((4, 3)), c1, s1), 0.0)
    with pytest.raises(ValueError, match="NaN"):
        normalize_transform(np.array([[0, 0, np.nan]]))
    with pytest.raises(ValueError, match="non-empty"):
        normalize_transform(np.zeros((0, 3)))


def test_shape_from_mesh_normalises_mesh_and_points_in_one_frame():
    tm, mesh = _sphere_mesh(seed=2)
    # A stray unreferenced vertex far away must not affect the frame.
    mesh.vertices = np.concatenate([mesh.vertices, [[1e3, 1e3, 1e3]]]).astype(np.float32)
    names = [f"p{i}" for i in range(len(mesh.faces))]
    shape = shape_from_mesh("t/sphere", "Thing", names, mesh, 1024, seed=5, source="test", meta={"k": 1})
    assert shape.points.shape == (1024, 3) and shape.normals.shape == (1024, 3)
    assert shape.source == "test" and shape.meta["k"] == 1 and shape.category == "Thing"
    v = shape.mesh.vertices
    assert len(v) == len(tm.vertices)  # the stray vertex is gone
    assert np.isclose(np.linalg.norm(v, axis=1).max(), 1.0, atol=1e-6)
    assert np.linalg.norm(shape.points, axis=1).max() <= 1.0 + 1e-6
    assert np.linalg.norm(shape.points, axis=1).max() > 0.9
    # Points lie on the stored (normalised) mesh, on the face their label names.
    norm_mesh = trimesh.Trimesh(v, shape.mesh.faces, process=False)
    closest = trimesh.triangles.closest_point(norm_mesh.triangles[shape.labels], shape.points.astype(np.float64))
    assert np.abs(closest - shape.points).max() < 1e-5
    # meta["normalize"] maps back onto the original surface.
    n = shape.meta["normalize"]
    back = shape.points.astype(np.float64) * n["scale"] + np.array(n["center"])
    _, dist, _ = trimesh.proximity.closest_point(tm, back)
    assert dist.max() < 1e-4


def test_shape_from_mesh_drops_degenerate_faces():
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [2, 0, 0], [3, 0, 0]], np.float32)
    faces = np.array([[0, 1, 2], [0, 3, 4], [1, 1, 2]], np.int32)  # collinear, repeated index
    shape = shape_from_mesh("t/deg", "X", ["a", "b", "c"], Mesh(v, faces, np.array([0, 1, 2])), 64, seed=0)
    assert len(shape.mesh.faces) == 1 and np.all(shape.labels == 0)
    assert len(shape.mesh.vertices) == 3


@pytest.mark.parametrize(
    ("vertices", "faces", "labels", "reason"),
    [
        (np.zeros((0, 3)), np.zeros((0, 3), int), None, "no vertices"),
        (np.eye(3), np.zeros((0, 3), int), None, "no triangle faces"),
        (np.array([[0, 0, 0], [1, 0, 0], [0, np.nan, 0]]), np.array([[0, 1, 2]]), None, "NaN or inf"),
        (np.eye(3), np.array([[0, 1, 3]]), None, "out of range"),
        (np.eye(3), np.array([[0, 1, 2]]), np.array([0, 0]), "2 face labels for 1 faces"),
        (np.eye(3), np.array([[0, 1, 2]]), np.array([5]), "outside"),
        (np.array([[0, 0, 0], [1, 1, 1], [2, 2, 2]]), np.array([[0, 1, 2]]), None, "zero surface area"),
    ],
)
def test_shape_from_mesh_rejects_bad_meshes(vertices, faces, labels, reason):
    with pytest.raises(ShapeError, match=reason) as err:
        shape_from_mesh("t/bad", "X", ["a", "b"], Mesh(vertices, faces, labels), 32, seed=0)
    assert "t/bad" in str(err.value)


def test_shape_from_points_subsamples_and_normalises():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1, 1, (5000, 3)) * [4, 2, 1] + [3, 3, 3]
    labels = (pts[:, 0] > 3).astype(np.int64)
    normals = rng.normal(size=(5000, 3)) * 3.0
    shape = shape_from_points("t/pc", "X", ["left", "right"], pts, normals, labels, 2048, seed=1)
    assert shape.points.shape == (2048, 3) and shape.mesh is None
    assert np.linalg.norm(shape.points, axis=1).max() <= 1.0 + 1e-6
    # Without replacement: all drawn points distinct.
    assert len(np.unique(shape.points, axis=0)) == 2048
    # Labels travel with their points (x > 3 in the original frame ↔ label 1).
    n = shape.meta["normalize"]
    back = shape.points.astype(np.float64) * n["scale"] + np.array(n["center"])
    assert np.array_equal(shape.labels, (back[:, 0] > 3).astype(np.int64))
    assert np.allclose(np.linalg.norm(shape.normals, axis=1), 1.0, atol=1e-5)
    again = shape_from_points("t/pc", "X", ["left", "right"], pts, normals, labels, 2048, seed=1)
    assert np.array_equal(again.points, shape.points)


def test_shape_from_points_with_too_few_points_keeps_all():
    pts = np.random.default_rng(1).normal(size=(100, 3))
    shape = shape_from_points("t/few", "X", ["a"], pts, None, None, 256, seed=0)
    assert shape.points.shape == (256, 3) and shape.normals is None and shape.labels is None
    assert len(np.unique(shape.points, axis=0)) == 100


@pytest.mark.parametrize(
    ("points", "labels", "reason"),
    [
        (np.zeros((0, 3)), None, "no points"),
        (np.array([[0, 0, 0], [np.nan, 1, 1]]), None, "1 of 2 points have NaN"),
        (np.zeros((3, 2)), None, r"\(M, 3\)"),
        (np.eye(3), np.array([0, 1]), "labels"),
        (np.eye(3), np.array([0, 1, 2]), "outside"),
    ],
)
def test_shape_from_points_rejects_bad_input(points, labels, reason):
    with pytest.raises(ShapeError, match=reason):
        shape_from_points("t/bad", "X", ["a", "b"], points, None, labels, 16, seed=0)


def test_derive_seed_is_stable_and_keyed():
    assert derive_seed(0, "a/b") == derive_seed(0, "a/b")
    assert derive_seed(0, "a/b") != derive_seed(0, "a/c") != derive_seed(1, "a/c")
    assert 0 <= derive_seed(-5, "x") < 2**63
