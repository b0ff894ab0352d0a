"""Cut-pursuit superpoints and PartSLIP's superpoint vote."""

from __future__ import annotations

import numpy as np
import pytest

from distill.records import KnowledgeUnits
from distill.superpoints import (
    SuperpointConfig,
    estimate_normals,
    superpoint_scores,
    superpoint_scores_reference,
    superpoint_vote,
    superpoint_vote_nearest,
    superpoints,
)
from distill.voting import vote


def box_faces(n_per_face: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The six faces of the unit cube: points, exact outward normals, face index."""
    rng = np.random.default_rng(seed)
    pts, nrm, face = [], [], []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            p = rng.uniform(-0.5, 0.5, (n_per_face, 3))
            p[:, axis] = 0.5 * sign
            n = np.zeros((n_per_face, 3))
            n[:, axis] = sign
            pts.append(p)
            nrm.append(n)
            face.append(np.full(n_per_face, len(face)))
    return np.concatenate(pts), np.concatenate(nrm), np.concatenate(face)


def corner_planes(n_per_plane: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three mutually perpendicular unit squares meeting at the origin (x=0, y=0, z=0)."""
    rng = np.random.default_rng(seed)
    pts, nrm, plane = [], [], []
    for axis in range(3):
        p = rng.uniform(0.0, 1.0, (n_per_plane, 3))
        p[:, axis] = 0.0
        n = np.zeros((n_per_plane, 3))
        n[:, axis] = 1.0
        pts.append(p)
        nrm.append(n)
        plane.append(np.full(n_per_plane, axis))
    return np.concatenate(pts), np.concatenate(nrm), np.concatenate(plane)


def assert_pure(labels: np.ndarray, truth: np.ndarray) -> None:
    for s in np.unique(labels):
        assert len(np.unique(truth[labels == s])) == 1, f"superpoint {s} spans {np.unique(truth[labels == s])}"


def assert_numbered_by_first_appearance(labels: np.ndarray) -> None:
    _, first = np.unique(labels, return_index=True)
    np.testing.assert_array_equal(labels[np.sort(first)], np.arange(len(first)))
    assert labels.dtype == np.int32


# --- superpoints -------------------------------------------------------------------------


def test_perpendicular_planes_give_one_superpoint_each():
    points, normals, plane = corner_planes(700)
    labels, reason = superpoints(points, normals)
    assert reason == ""
    assert labels.shape == (2100,) and labels.max() + 1 == 3
    assert_pure(labels, plane)
    assert_numbered_by_first_appearance(labels)


def test_box_faces_give_one_superpoint_each():
    points, normals, face = box_faces(340)
    labels, reason = superpoints(points, normals)
    assert reason == "" and labels.max() + 1 == 6
    assert_pure(labels, face)


def test_estimate_normals_plane_and_sphere():
    rng = np.random.default_rng(0)
    plane = np.c_[rng.uniform(0, 1, (500, 2)), np.zeros(500)] @ np.linalg.qr(rng.normal(size=(3, 3)))[0]
    true_plane = np.cross(plane[1] - plane[0], plane[2] - plane[0])
    true_plane /= np.linalg.norm(true_plane)
    n = estimate_normals(plane)
    assert n.shape == (500, 3)
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-9)
    assert (np.abs(n @ true_plane) > 0.99).all()

    sphere = rng.normal(size=(2000, 3))
    sphere /= np.linalg.norm(sphere, axis=1, keepdims=True)
    n = estimate_normals(sphere + 5.0)  # off the origin: the sign follows the cloud's centroid
    cos = np.einsum("ni,ni->n", n, sphere)
    assert (cos > 0.99).all()  # outward, not just parallel


def test_estimated_normals_segment_two_planes():
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 1, (600, 3))
    a[:, 2] = 0.0
    b = rng.uniform(0, 1, (600, 3))
    b[:, 0] = 0.0
    truth = np.repeat([0, 1], 600)
    labels, reason = superpoints(np.r_[a, b])  # normals=None → estimated
    assert reason == ""
    assert 2 <= labels.max() + 1 <= 4
    majority = sum(np.bincount(truth[labels == s]).max() for s in np.unique(labels))
    assert majority / len(truth) > 0.97  # only the crease's points can be on the wrong side


def test_small_components_are_merged():
    rng = np.random.default_rng(2)
    plane = rng.uniform(0, 1, (500, 3))
    plane[:, 2] = 0.0
    bump = np.c_[rng.uniform(0.5, 0.52, (6, 2)), np.full(6, 1e-3)]  # 6 points with another normal
    points = np.r_[plane, bump]
    normals = np.r_[np.tile([0.0, 0.0, 1.0], (500, 1)), np.tile([1.0, 0.0, 0.0], (6, 1))]
    unmerged, _ = superpoints(points, normals, SuperpointConfig(min_size=0))
    assert np.bincount(unmerged).min() == 6  # cut pursuit does isolate the bump...
    labels, _ = superpoints(points, normals)
    assert np.bincount(labels).min() > SuperpointConfig().min_size  # ...and the merge absorbs it
    assert (labels == labels[0]).all()


def test_no_small_component_survives_on_a_box():
    points, _, _ = box_faces(200, seed=3)
    labels, _ = superpoints(points)  # estimated normals: the edges give small pieces to merge
    assert np.bincount(labels).min() > 10


def test_deterministic():
    points, normals, _ = box_faces(150, seed=4)
    normals = normals + np.random.default_rng(4).normal(scale=0.2, size=normals.shape)  # a harder split
    first, _ = superpoints(points, normals)
    for _ in range(3):
        np.testing.assert_array_equal(superpoints(points, normals)[0], first)
    np.testing.assert_array_equal(superpoints(points)[0], superpoints(points.copy())[0])


def test_too_few_points_fall_back_to_one_superpoint_each():
    labels, reason = superpoints(np.random.default_rng(0).normal(size=(5, 3)))
    np.testing.assert_array_equal(labels, np.arange(5))
    assert reason == "fallback: 5 points < k+1=11" and labels.dtype == np.int32


def test_coincident_points_fall_back():
    labels, reason = superpoints(np.ones((50, 3)))
    np.testing.assert_array_equal(labels, np.arange(50))
    assert reason == "fallback: all points coincide"


def test_nonfinite_normals_are_reestimated():
    points, normals, plane = corner_planes(300)
    normals[7] = np.nan
    labels, reason = superpoints(points, normals)
    assert reason == "normals re-estimated: non-finite input normals"
    np.testing.assert_array_equal(labels, superpoints(points)[0])


def test_duplicate_points_are_fine():
    points, normals, plane = corner_planes(300)
    points = np.r_[points, np.repeat(points[:3], 15, axis=0)]  # 15 copies each: more than k
    normals = np.r_[normals, np.repeat(normals[:3], 15, axis=0)]
    labels, reason = superpoints(points, normals)
    assert reason == "" and labels.max() + 1 == 3
    assert_pure(labels, np.r_[plane, np.repeat(plane[:3], 15)])
    # Only duplicates along a line: zero edge lengths between copies, no division by zero.
    line = np.repeat(np.c_[np.arange(4.0), np.zeros(4), np.zeros(4)], 12, axis=0)
    labels, reason = superpoints(line, np.tile([0.0, 0.0, 1.0], (48, 1)))
    assert reason == "" and labels.shape == (48,) and (labels >= 0).all()


@pytest.mark.parametrize(
    "points, normals, match",
    [
        (np.zeros((10, 2)), None, r"\(N, 3\)"),
        (np.zeros((0, 3)), None, "empty"),
        (np.array([[0.0, 0.0, np.nan]] * 20), None, "finite"),
        (np.random.default_rng(0).normal(size=(20, 3)), np.zeros((19, 3)), "normals must be"),
    ],
)
def test_bad_arguments_raise(points, normals, match):
    with pytest.raises(ValueError, match=match):
        superpoints(points, normals)


def test_bad_config_raises():
    with pytest.raises(ValueError, match="reg > 0"):
        SuperpointConfig(reg=0.0)


# --- the superpoint vote -----------------------------------------------------------------


def random_units(n: int, parts: int, k: int, seed: int) -> KnowledgeUnits:
    """k units over 4 views, every unit part of a pair of overlapping boxes of one part in one
    view; every 5th unit scored 0."""
    rng = np.random.default_rng(seed)
    views, labels, scores, sets = [], [], [], []
    for _ in range(k // 2):
        view, label = int(rng.integers(0, 4)), int(rng.integers(0, parts))
        a = rng.choice(n, int(rng.integers(1, n // 3)), replace=False)
        b = np.r_[a[: len(a) // 2], rng.choice(n, 5, replace=False)]  # overlaps a
        for s in (a, b):
            views.append(view)
            labels.append(label)
            scores.append(float(rng.uniform(0.3, 1.0)))
            sets.append(np.unique(s))
    scores = [0.0 if i % 5 == 0 else s for i, s in enumerate(scores)]
    return KnowledgeUnits.from_lists("shape-r", views, labels, scores, sets)


@pytest.mark.parametrize("seed", range(4))
def test_scores_match_reference(seed):
    rng = np.random.default_rng(seed)
    units = random_units(n=150, parts=4, k=30, seed=seed)
    sp = rng.integers(0, 12, 150)
    fast = superpoint_scores(units, sp, 4)
    np.testing.assert_allclose(fast, superpoint_scores_reference(units, sp, 4), atol=1e-12)
    assert fast.shape == (12, 4) and fast.min() >= 0 and fast.max() <= 1 and (fast > 0).any()


def test_scores_known_case():
    # SP 0 = points 0-3. View 0: two overlapping boxes of part 0 ({0,1,2}, {1,2}), part 1 on {3}.
    # View 1: part 1 on {2,3}. View 2: a zero-scored part 1 unit on {0} (seen, no vote).
    # Seen point-views: 4 + 2 + 1 = 7. Part 0: 3 (each point once). Part 1: 1 + 2 = 3.
    units = KnowledgeUnits.from_lists(
        "s",
        [0, 0, 0, 1, 2],
        [0, 0, 1, 1, 1],
        [0.9, 0.8, 0.7, 0.6, 0.0],
        [np.array([0, 1, 2]), np.array([1, 2]), np.array([3]), np.array([2, 3]), np.array([0])],
    )
    sp = np.array([0, 0, 0, 0, 1])  # SP 1 = point 4, never seen
    np.testing.assert_allclose(superpoint_scores(units, sp, 2), [[3 / 7, 3 / 7], [0.0, 0.0]])
    np.testing.assert_array_equal(superpoint_vote(units, sp, 2), [-1] * 5)  # 3/7 < 0.5
    np.testing.assert_array_equal(superpoint_vote(units, sp, 2, threshold=0.4), [0, 0, 0, 0, -1])  # tie → 0


def test_a_bleeding_box_is_outvoted_inside_the_superpoint():
    # Points 0-9 (x = 0..9) are part 0 and superpoint 0; points 10-19 part 1 and superpoint 1.
    # View 0: part 1's box bleeds over 6-9 with a higher score than part 0's box over 0-9.
    # View 1 sees part 0 only in part (0-5; the rest occluded) and part 1 whole.
    units = KnowledgeUnits.from_lists(
        "s",
        [0, 0, 1, 1],
        [1, 0, 0, 1],
        [0.9, 0.5, 0.6, 0.6],
        [np.arange(6, 20), np.arange(0, 10), np.arange(0, 6), np.arange(10, 20)],
    )
    sp = np.repeat([0, 1], 10)
    truth = np.repeat([0, 1], 10)
    per_point = vote(units, 20, 2)
    assert (per_point[6:10] == 1).all()  # the per-point vote follows the bleeding box
    labels = superpoint_vote(units, sp, 2)
    np.testing.assert_array_equal(labels, truth)
    # SP 0: seen 10 + 6 = 16 point-views; part 0 inside 16 of them, part 1 inside 4.
    np.testing.assert_allclose(superpoint_scores(units, sp, 2)[0], [1.0, 4 / 16])


def test_threshold_leaves_a_split_superpoint_unlabelled_and_nearest_fills_it():
    # SP 0 (points 0-9): three parts cover 4, 3 and 3 of its points → max score 0.4 < 0.5.
    # SP 1 (points 10-19): part 1 everywhere. Points on a line, SP 0 next to SP 1.
    units = KnowledgeUnits.from_lists(
        "s",
        [0, 0, 0, 0],
        [0, 1, 2, 1],
        [0.9, 0.9, 0.9, 0.9],
        [np.arange(0, 4), np.arange(4, 7), np.arange(7, 10), np.arange(10, 20)],
    )
    sp = np.repeat([0, 1], 10)
    points = np.c_[np.arange(20.0), np.zeros(20), np.zeros(20)]
    labels = superpoint_vote(units, sp, 3)
    np.testing.assert_array_equal(labels, [-1] * 10 + [1] * 10)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(superpoint_vote_nearest(units, points, sp, 3), [1] * 20)
    nothing = superpoint_vote_nearest(KnowledgeUnits.empty("s"), points, sp, 3)
    np.testing.assert_array_equal(nothing, [-1] * 20)


def test_mismatched_superpoints_raise_with_the_shape_id():
    units = KnowledgeUnits.from_lists("chair-042", [0], [0], [0.9], [np.arange(0, 30)])
    points = np.zeros((30, 3))
    with pytest.raises(ValueError, match="chair-042.*re-run ingest"):
        superpoint_scores(units, np.zeros(20, np.int64), 2)  # units reach point 29
    with pytest.raises(ValueError, match="chair-042.*re-run ingest"):
        superpoint_vote_nearest(units, points, np.zeros(31, np.int64), 2)
    with pytest.raises(ValueError, match="chair-042"):
        superpoint_vote(units, np.zeros((30, 1), np.int64), 2)
    with pytest.raises(ValueError, match="chair-042"):
        superpoint_vote(units, -np.ones(30, np.int64), 2)
    with pytest.raises(ValueError, match="chair-042"):
        superpoint_vote(units, np.zeros(30), 2)  # float ids
    with pytest.raises(ValueError, match="labels outside"):  # check_units still applies
        superpoint_vote(KnowledgeUnits.from_lists("s", [0], [3], [0.9], [np.arange(3)]), np.zeros(30, np.int64), 2)
