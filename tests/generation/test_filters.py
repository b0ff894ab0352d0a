"""Mesh quality filters (generation/filters.py) on hand-made bad meshes and the procedural corpus."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from distill.sampling import face_areas_normals
from generation.filters import (
    ASPECT_BOUNDS,
    MeshChecks,
    check_mesh,
    piece_shares,
    principal_extents,
    reason_kind,
)
from generation.procedural import CATEGORIES, make_shape


def _tet(center, size: float) -> trimesh.Trimesh:
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], float) * size + center
    return trimesh.Trimesh(v, [[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], process=False)


def _chairish() -> trimesh.Trimesh:
    """A seat, a back and four legs: separate touching boxes, like a part-assembled model."""
    parts = [trimesh.creation.box((1.0, 0.1, 1.0))]
    back = trimesh.creation.box((1.0, 1.0, 0.1))
    back.apply_translation((0, 0.55, -0.45))
    parts.append(back)
    for x in (-0.45, 0.45):
        for z in (-0.45, 0.45):
            leg = trimesh.creation.box((0.08, 0.9, 0.08))
            leg.apply_translation((x, -0.5, z))
            parts.append(leg)
    return trimesh.util.concatenate(parts)


def _shares(mesh: trimesh.Trimesh) -> np.ndarray:
    v, f = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    return piece_shares(v, f, face_areas_normals(v, f)[0], np.asarray(mesh.sample(20000, seed=0)), voxels=48)


def test_empty_mesh():
    assert check_mesh(trimesh.Trimesh(), "Chair").startswith("empty:")


def test_nan_vertices_and_bad_indices_are_invalid():
    box = trimesh.creation.box()
    v = np.array(box.vertices)
    v[0] = np.nan
    assert reason_kind(check_mesh(trimesh.Trimesh(v, box.faces, process=False), "Chair")) == "invalid"
    faces = np.array(box.faces)
    faces[0, 0] = 99
    assert reason_kind(check_mesh(trimesh.Trimesh(box.vertices, faces, process=False), "Chair")) == "invalid"


def test_flat_quad_sheet_is_rejected_even_when_tilted():
    quad = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], [[0, 1, 2], [0, 2, 3]], process=False)
    reason = check_mesh(quad, "Chair")
    assert reason.startswith("flat:") and "0.00%" in reason
    tilted = quad.copy()
    tilted.apply_transform(trimesh.transformations.rotation_matrix(0.7, [1, 1, 0]))
    assert reason_kind(check_mesh(tilted, "Table")) == "flat"
    # A thin slab 1 % thick is still a sheet; 5 % thick has volume.
    assert reason_kind(check_mesh(trimesh.creation.box((1, 0.01, 1)), "Widget")) == "flat"
    assert check_mesh(trimesh.creation.box((1, 0.05, 1)), "Widget") is None


def test_zero_area_is_degenerate():
    # Three collinear points: area 0 but extent 1.
    line = trimesh.Trimesh([[0, 0, 0], [0.5, 0, 0], [1, 0, 0]], [[0, 1, 2]], process=False)
    assert reason_kind(check_mesh(line, "Chair")) == "degenerate"


def test_twenty_scattered_tetrahedra_are_fragmented():
    rng = np.random.default_rng(0)
    debris = trimesh.util.concatenate([_tet(rng.uniform(-1, 1, 3), 0.05) for _ in range(20)])
    reason = check_mesh(debris, "Chair")
    assert reason.startswith("fragmented:") and "20 pieces" in reason


def test_many_significant_pieces_are_fragmented_even_with_a_main_body():
    # A main body with 70 % of the area plus 10 pieces of 3 % each on a ring around it.
    body = trimesh.creation.box((1, 1, 1))
    small_side = np.sqrt(body.area * 0.3 / 10 / 6)
    pieces = [body]
    for k in range(10):
        p = trimesh.creation.box((small_side,) * 3)
        angle = 2 * np.pi * k / 10
        p.apply_translation((3 * np.cos(angle), 0.0, 3 * np.sin(angle)))
        pieces.append(p)
    mesh = trimesh.util.concatenate(pieces)
    assert check_mesh(mesh, "Widget", MeshChecks(max_pieces=20)) is None  # 70 % main share is fine
    reason = check_mesh(mesh, "Widget")
    assert reason.startswith("fragmented:") and "11 pieces" in reason


def test_touching_parts_are_one_piece_and_a_small_floater_is_tolerated():
    chair = _chairish()
    assert check_mesh(chair, "Chair") is None
    assert _shares(chair) == pytest.approx([1.0])
    with_floater = trimesh.util.concatenate([chair, _tet((0.0, 1.5, 1.2), 0.05)])
    shares = _shares(with_floater)
    assert len(shares) == 2 and shares[0] > 0.99 and shares.sum() == pytest.approx(1.0)
    assert check_mesh(with_floater, "Chair") is None


def test_needle_is_no_chair():
    needle = trimesh.creation.cylinder(radius=0.05, height=2.0)
    reason = check_mesh(needle, "Chair")
    assert reason.startswith("extent:") and "Chair" in reason
    # Unknown categories get the generic checks only; extent checks can be switched off.
    assert check_mesh(needle, "Widget") is None
    assert check_mesh(needle, "Chair", MeshChecks(check_extent=False)) is None


def test_ball_is_no_rocket_but_a_fine_mug():
    ball = trimesh.creation.icosphere(subdivisions=2)
    assert reason_kind(check_mesh(ball, "Rocket")) == "extent"
    assert check_mesh(ball, "mug") is None  # case-insensitive category lookup


def test_thin_categories_use_their_own_thickness_floor():
    blade = trimesh.creation.box((1.0, 0.08, 0.012))  # a knife: 1.2 % thick
    assert check_mesh(blade, "Knife") is None
    assert reason_kind(check_mesh(blade, "Widget")) == "flat"


def test_principal_extents_are_rotation_invariant():
    box = trimesh.creation.box((2.0, 1.0, 0.5))
    rotated = box.copy()
    rotated.apply_transform(trimesh.transformations.random_rotation_matrix(np.random.default_rng(3).random(3)))
    for m in (box, rotated):
        v = np.asarray(m.vertices)
        ext = principal_extents(v, m.sample(4000, seed=0))
        np.testing.assert_allclose(ext, [2.0, 1.0, 0.5], rtol=0.03)  # axes from samples


def test_checks_are_deterministic():
    rng = np.random.default_rng(1)
    debris = trimesh.util.concatenate([_tet(rng.uniform(-1, 1, 3), 0.2) for _ in range(5)] + [_chairish()])
    assert check_mesh(debris, "Chair") == check_mesh(debris, "Chair")


@pytest.mark.parametrize("category", CATEGORIES)
def test_procedural_shapes_pass(category):
    for index in range(6):
        shape = make_shape(category, index, seed=0, num_points=64)
        mesh = trimesh.Trimesh(shape.mesh.vertices, shape.mesh.faces, process=False)
        assert check_mesh(mesh, category) is None, (category, index)
    assert category.casefold() in ASPECT_BOUNDS


def test_reason_kind():
    assert reason_kind("fragmented: the largest ...") == "fragmented"
    assert reason_kind("error: ValueError: x") == "error"
    assert reason_kind("") == "unknown"
