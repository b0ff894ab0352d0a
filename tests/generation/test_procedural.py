"""The embedded procedural corpus (generation/procedural.py) and the generator registry."""

from __future__ import annotations

import time

import numpy as np
import pytest
import trimesh

import generation
from distill.categories import SHAPENETPART_PARTS
from distill.sampling import face_areas_normals
from generation.procedural import CATEGORIES, PROCEDURAL_PARTS, MeshBuilder, box_mesh, make_mesh, make_shape

INSTANCES = 8


@pytest.fixture(scope="module")
def corpus():
    start = time.perf_counter()
    shapes = {c: [make_shape(c, i, seed=0, num_points=1024) for i in range(INSTANCES)] for c in CATEGORIES}
    per_shape = (time.perf_counter() - start) / (len(CATEGORIES) * INSTANCES)
    print(f"procedural: {per_shape * 1000:.1f} ms per shape")
    return shapes, per_shape


def _part_fractions(shape) -> np.ndarray:
    areas, _ = face_areas_normals(shape.mesh.vertices, shape.mesh.faces)
    return np.bincount(shape.mesh.face_labels, weights=areas, minlength=shape.num_parts) / areas.sum()


def test_categories_and_part_names():
    assert len(CATEGORIES) >= 6
    for c in CATEGORIES:
        assert len(PROCEDURAL_PARTS[c]) >= 3
        # Same names and order as ShapeNetPart, so procedural students evaluate there as is.
        assert PROCEDURAL_PARTS[c] == SHAPENETPART_PARTS[c]


def test_every_category_builds_valid_shapes(corpus):
    shapes, per_shape = corpus
    for c, group in shapes.items():
        for i, s in enumerate(group):
            assert s.shape_id == f"procedural/{c}/{i:05d}" and s.category == c and s.source == "procedural"
            assert s.points.shape == (1024, 3) and s.labels.shape == (1024,) and s.normals.shape == (1024, 3)
            assert s.part_names == PROCEDURAL_PARTS[c]
            radius = np.linalg.norm(s.points, axis=1)
            assert radius.max() <= 1.0 + 1e-5 and radius.max() > 0.9
            assert np.isclose(np.linalg.norm(s.mesh.vertices, axis=1).max(), 1.0, atol=1e-5)
            assert s.meta["seed"] == 0 and s.meta["index"] == i and s.meta["params"]
    assert per_shape < 0.1


def test_parts_present_and_visible(corpus):
    shapes, _ = corpus
    distinct = []
    for group in shapes.values():
        for s in group:
            frac = _part_fractions(s)
            present = frac > 0
            distinct.append(int(present.sum()))
            assert present.sum() >= 2, s.shape_id
            # Every present part is a visible share of the surface, and of the sampled points.
            assert frac[present].min() >= 0.03, (s.shape_id, frac)
            assert set(np.unique(s.labels)) == set(np.flatnonzero(present)), s.shape_id
    assert np.mean(distinct) >= 3.0


def test_instances_vary_and_are_reproducible():
    a = make_shape("Chair", 3, seed=5, num_points=256)
    b = make_shape("chair", 3, seed=5, num_points=256)  # case-insensitive category
    assert np.array_equal(a.points, b.points) and np.array_equal(a.labels, b.labels) and a.meta == b.meta
    assert not np.array_equal(make_shape("Chair", 4, seed=5, num_points=256).points, a.points)
    assert make_shape("Chair", 3, seed=6, num_points=256).meta["params"] != a.meta["params"]
    # Part counts vary across instances.
    legs = {make_mesh("Chair", i, 0)[1]["legs"] for i in range(30)}
    engines = {make_mesh("Airplane", i, 0)[1]["engines"] for i in range(30)}
    assert len(legs) >= 3 and engines == {2, 4}


def test_meshes_are_closed_and_outward(corpus):
    shapes, _ = corpus
    for c in CATEGORIES:
        s = shapes[c][0]
        tm = trimesh.Trimesh(s.mesh.vertices, s.mesh.faces, process=False)
        assert tm.is_winding_consistent and tm.is_watertight, c
        for part in tm.split(only_watertight=False):
            assert part.volume > 0, c  # every primitive's normals point outwards


def test_builder_flips_inward_primitives():
    v, f = box_mesh((1.0, 2.0, 3.0))
    b = MeshBuilder()
    b.add((v * [-1.0, 1.0, 1.0], f), 0)  # a mirror turns the winding inwards
    mesh = b.mesh()
    assert np.isclose(trimesh.Trimesh(mesh.vertices, mesh.faces, process=False).volume, 6.0)


def _centroid(shape, part: str) -> np.ndarray:
    return shape.points[shape.labels == shape.part_names.index(part)].mean(0)


def test_shapes_are_plausible(corpus):
    shapes, _ = corpus
    for s in shapes["Chair"]:
        assert _centroid(s, "back")[1] > _centroid(s, "seat")[1] > _centroid(s, "leg")[1]
        assert _centroid(s, "back")[2] < _centroid(s, "seat")[2]  # the back is behind (front = +z)
    for s in shapes["Table"]:
        assert _centroid(s, "tabletop")[1] > _centroid(s, "leg")[1]
    for s in shapes["Rocket"]:
        assert _centroid(s, "nose cone")[1] > _centroid(s, "body")[1] > _centroid(s, "fin")[1]
    for s in shapes["Guitar"]:
        assert _centroid(s, "head or tuners")[1] > _centroid(s, "neck")[1] > _centroid(s, "body")[1]
    for s in shapes["Airplane"]:
        wing = s.points[s.labels == s.part_names.index("wing")]
        body = s.points[s.labels == s.part_names.index("body")]
        assert np.ptp(wing[:, 0]) > 2 * np.ptp(body[:, 0]) and np.ptp(body[:, 2]) > np.ptp(body[:, 0])
    for s in shapes["Car"]:
        assert _centroid(s, "roof")[1] > _centroid(s, "body")[1] > _centroid(s, "wheel or tire")[1]
    for s in shapes["Lamp"]:
        if s.meta["params"]["pendant"]:
            assert _centroid(s, "canopy")[1] > _centroid(s, "lampshade")[1]
        else:
            assert _centroid(s, "lampshade")[1] > _centroid(s, "base")[1]
    for s in shapes["Skateboard"]:
        assert _centroid(s, "deck")[1] > _centroid(s, "wheel")[1]


def test_unknown_category_and_bad_index():
    with pytest.raises(ValueError, match="unknown procedural category 'Sofa' — use one of: Airplane"):
        make_shape("Sofa", 0, seed=0)
    with pytest.raises(ValueError, match="index=-1"):
        make_shape("Chair", -1, seed=0)


def test_generator_registry():
    s = generation.generate("procedural", "Lamp", 2, seed=1, num_points=64)
    assert np.array_equal(s.points, make_shape("Lamp", 2, seed=1, num_points=64).points)
    with pytest.raises(ValueError, match="unknown generator 'nope'; registered: procedural"):
        generation.generate("nope", "Lamp", 0, seed=0)
    generation.register_generator("echo", lambda c, i, seed, n: make_shape(c, i, seed, n))
    try:
        assert generation.generate("echo", "Table", 0, seed=0, num_points=32).num_points == 32
    finally:
        del generation.GENERATORS["echo"]
