"""Voting baseline: vectorised against plain loops, known small cases, nearest filling."""

from __future__ import annotations

import numpy as np
import pytest

from distill.records import KnowledgeUnits
from distill.voting import vote, vote_nearest, vote_reference, vote_scores


def random_units(n: int, parts: int, k: int, seed: int) -> KnowledgeUnits:
    rng = np.random.default_rng(seed)
    sets = [rng.choice(n, int(rng.integers(1, n // 3)), replace=False) for _ in range(k)]
    return KnowledgeUnits.from_lists(
        "s",
        list(rng.integers(0, 10, k)),
        list(rng.integers(0, parts, k)),
        list(rng.uniform(0.5, 1.0, k)),
        sets,
    )


@pytest.mark.parametrize("seed", range(4))
def test_vote_matches_reference(seed):
    units = random_units(n=300, parts=5, k=25, seed=seed)
    fast = vote(units, 300, 5)
    np.testing.assert_array_equal(fast, vote_reference(units, 300, 5))
    assert (fast >= 0).any() and fast.dtype == np.int64


def test_vote_known_case():
    # Point 0: part 1 (0.9) vs part 0 (0.6 + 0.5 = 1.1) → 0. Point 1: only part 1. Point 2: none.
    # Point 3: a tie 0.7 / 0.7 → the lower index. Point 4: a zero-score unit only → unlabelled.
    units = KnowledgeUnits.from_lists(
        "s",
        [0, 1, 2, 3, 3, 4],
        [1, 0, 0, 2, 1, 2],
        [0.9, 0.6, 0.5, 0.7, 0.7, 0.0],
        [np.array([0, 1]), np.array([0]), np.array([0]), np.array([3]), np.array([3]), np.array([4])],
    )
    np.testing.assert_array_equal(vote(units, 5, 3), [0, 1, -1, 1, -1])
    acc = vote_scores(units, 5, 3)
    np.testing.assert_allclose(acc[0], [1.1, 0.9, 0.0])


def test_vote_nearest_fills_uncovered_points():
    points = np.array([[0, 0, 0], [1, 0, 0], [0.1, 0, 0], [0.9, 0, 0], [5, 5, 5]], np.float32)
    units = KnowledgeUnits.from_lists("s", [0, 0], [2, 1], [1.0, 1.0], [np.array([0]), np.array([1])])
    np.testing.assert_array_equal(vote(units, 5, 3), [2, 1, -1, -1, -1])
    np.testing.assert_array_equal(vote_nearest(units, points, 3), [2, 1, 2, 1, 1])
    # Nothing covered: nothing to copy from.
    np.testing.assert_array_equal(vote_nearest(KnowledgeUnits.empty("s"), points, 3), [-1] * 5)


def test_vote_rejects_bad_units():
    units = KnowledgeUnits.from_lists("s", [0], [3], [1.0], [np.array([0])])
    with pytest.raises(ValueError, match="labels outside"):
        vote(units, 4, 3)
    units = KnowledgeUnits.from_lists("s", [0], [0], [1.0], [np.array([7])])
    with pytest.raises(ValueError, match="index points outside"):
        vote(units, 4, 3)
    with pytest.raises(ValueError, match="points must be"):
        vote_nearest(units, np.zeros((4, 2)), 3)
