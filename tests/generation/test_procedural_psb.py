"""Procedural categories made for Labeled PSB categories: Cup, Glasses, Human, Plier, Vase."""

from __future__ import annotations

import numpy as np
import pytest

from distill.categories import PSB_PARTS
from distill.sampling import face_areas_normals
from generation.procedural import ALL_CATEGORIES, CATEGORIES, PSB_CATEGORIES, make_mesh, make_shape
from generation.procedural.creatures import POSES
from generation.procedural.primitives import frame_of, segment_mesh

INSTANCES = 12


def _fractions(shape) -> np.ndarray:
    areas, _ = face_areas_normals(shape.mesh.vertices, shape.mesh.faces)
    return np.bincount(shape.mesh.face_labels, weights=areas, minlength=shape.num_parts) / areas.sum()


@pytest.fixture(scope="module")
def corpus():
    return {c: [make_shape(c, i, seed=0, num_points=512) for i in range(INSTANCES)] for c in PSB_CATEGORIES}


def test_categories():
    assert set(PSB_CATEGORIES) == {"Cup", "Glasses", "Human", "Plier", "Vase"}
    assert ALL_CATEGORIES == (*CATEGORIES, *PSB_CATEGORIES) and len(CATEGORIES) == 8


def test_shapes_are_valid_and_in_psb_vocabulary(corpus):
    for c, group in corpus.items():
        for i, s in enumerate(group):
            assert s.shape_id == f"procedural/{c}/{i:05d}" and s.part_names == PSB_PARTS[c]
            assert s.points.shape == (512, 3) and np.isfinite(s.points).all()
            assert np.linalg.norm(s.points, axis=1).max() <= 1.0 + 1e-5
            assert s.mesh.face_labels.min() >= 0 and s.mesh.face_labels.max() < len(PSB_PARTS[c])


def test_part_shares_look_like_psb(corpus):
    # Mean surface share of each part over the instances, against the PSB sample's
    # (Cup handle ~6 %, Plier handle ~59 %, Glasses lens ~65 %, Human torso ~32 %).
    mean = {c: np.mean([_fractions(s) for s in g], axis=0) for c, g in corpus.items()}
    cup, glasses, human, plier = mean["Cup"], mean["Glasses"], mean["Human"], mean["Plier"]
    assert cup[0] > 0.85 and 0.02 < cup[1] < 0.15
    assert 0.35 < glasses[0] < 0.8 and glasses[1] < 0.1
    assert 0.4 < plier[2] < 0.75 and plier[0] > 0.05
    assert human[5] == max(human) and min(human) > 0.015  # torso largest, every part present
    for s in corpus["Human"]:  # every limb of every pose is there
        assert set(np.unique(s.labels)) == set(range(8)), s.shape_id


def test_variety_in_part_counts_and_poses():
    cups = [make_mesh("Cup", i, 0)[1] for i in range(40)]
    vases = [make_mesh("Vase", i, 0)[1] for i in range(40)]
    humans = [make_mesh("Human", i, 0)[1] for i in range(40)]
    glasses = [make_mesh("Glasses", i, 0)[1] for i in range(40)]
    assert {p["handles"] for p in cups} >= {0, 1}
    assert {p["handles"] for p in vases} == {0, 1, 2}
    assert {p["spout"] for p in vases} == {False, True} and {p["base"] for p in vases} == {False, True}
    assert len({p["pose"] for p in humans}) >= 5 and {p["pose"] for p in humans} <= set(POSES)
    assert np.ptp([p["size"] for p in humans]) > 0.15
    assert {p["fold_deg"] == 0 for p in glasses} == {False, True}
    # Reproducible from (seed, category, index) alone.
    a, b = make_shape("Human", 7, seed=3, num_points=128), make_shape("human", 7, seed=3, num_points=128)
    assert np.array_equal(a.points, b.points) and a.meta == b.meta


def test_segment_and_frame():
    d = np.array([1.0, 2.0, -2.0])
    assert np.allclose(frame_of(d) @ [0, 1, 0], d / 3)
    assert np.allclose(frame_of([0, -1, 0]) @ [0, 1, 0], [0, -1, 0])
    v, _ = segment_mesh([0, 0, 0], [0, 0, 2], 0.1, 0.1)
    assert np.isclose(v[:, 2].min(), 0) and np.isclose(v[:, 2].max(), 2)
    assert np.isclose(np.abs(v[:, :2]).max(), 0.1)
