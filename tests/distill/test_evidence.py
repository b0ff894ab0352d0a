"""Units' evidence for and against parts, and its combination with the student."""

from __future__ import annotations

import numpy as np
import pytest

from distill.evidence import combine, unit_evidence, unit_evidence_reference
from distill.records import KnowledgeUnits
from tests.distill.test_voting import random_units


@pytest.mark.parametrize("seed", range(4))
def test_evidence_matches_reference(seed):
    units = random_units(n=120, parts=4, k=30, seed=seed)
    units.score[::7] = 0.0  # a zero-scored unit still marks its points as seen
    pos, neg = unit_evidence(units, 120, 4)
    ref_pos, ref_neg = unit_evidence_reference(units, 120, 4)
    np.testing.assert_allclose(pos, ref_pos, atol=1e-12)
    np.testing.assert_allclose(neg, ref_neg, atol=1e-12)
    assert pos.shape == neg.shape == (120, 4) and neg.min() >= 0 and (neg > 0).any()


def test_a_bleeding_box_is_outvoted_by_the_views_that_saw_past_it():
    # Points 0-3 are part 0, 4-7 part 1. View 0: part 1's box bleeds over 2 and 3.
    # Views 1 and 2 see 0-7, detect part 1 tightly (4-7) and part 0 (0-3).
    units = KnowledgeUnits.from_lists(
        "s",
        [0, 0, 1, 1, 2, 2],
        [1, 0, 1, 0, 1, 0],
        [0.9, 0.5, 0.6, 0.6, 0.6, 0.6],
        [np.arange(2, 8), np.arange(0, 2), np.arange(4, 8), np.arange(0, 4), np.arange(4, 8), np.arange(0, 4)],
    )
    pos, neg = unit_evidence(units, 8, 2)
    np.testing.assert_allclose(pos[2], [1.2, 0.9])  # views 1, 2 vote 0; view 0 votes 1
    np.testing.assert_allclose(neg[2], [0.5, 1.2])  # view 0 found 0 elsewhere; 1, 2 found 1 elsewhere
    student = np.log(np.full((8, 2), 0.5))
    assert combine(student, pos, neg, 0.5, 1.0)[2] == 0
    # One ballot per view and part: two overlapping boxes of one part in one view count once.
    twice = KnowledgeUnits.from_lists("s", [0, 0], [0, 0], [0.4, 0.8], [np.arange(3), np.arange(1, 4)])
    pos, neg = unit_evidence(twice, 4, 1)
    np.testing.assert_allclose(pos[:, 0], [0.4, 0.8, 0.8, 0.8])
    np.testing.assert_allclose(neg, 0.0)


def test_the_negative_weight_can_turn_the_combined_label():
    # Point 0: part 1 has the larger vote (0.9 in view 0 against 0.6 in view 1), but views
    # 1 and 2 saw point 0 and found part 1 elsewhere (0.8 each).
    units = KnowledgeUnits.from_lists(
        "s",
        [0, 1, 1, 2, 2],
        [1, 0, 1, 0, 1],
        [0.9, 0.6, 0.8, 0.3, 0.8],
        [np.array([0, 1]), np.array([0]), np.array([1]), np.array([0]), np.array([1])],
    )
    pos, neg = unit_evidence(units, 2, 2)
    np.testing.assert_allclose(pos[0], [0.9, 0.9])
    np.testing.assert_allclose(neg[0], [0.0, 1.6])
    student = np.log(np.array([[0.45, 0.55], [0.5, 0.5]]))  # the student leans to part 1
    assert combine(student, pos, neg, 0.5, 0.0)[0] == 1  # no negatives: the student's tie-break
    assert combine(student, pos, neg, 0.5, 1.0)[0] == 0  # the views against part 1 turn it


def test_no_units_no_evidence_and_the_student_decides():
    pos, neg = unit_evidence(KnowledgeUnits.empty("s"), 5, 3)
    assert not pos.any() and not neg.any()
    student = np.log(np.array([[0.2, 0.7, 0.1]] * 5))
    np.testing.assert_array_equal(combine(student, pos, neg, 0.5, 1.0), [1] * 5)


def test_bad_inputs_are_named():
    units = random_units(n=50, parts=3, k=5, seed=0)
    with pytest.raises(ValueError, match="outside"):
        unit_evidence(units, 10, 3)
    with pytest.raises(ValueError, match="labels outside"):
        unit_evidence(units, 50, 1)
    with pytest.raises(ValueError, match="must be equal"):
        combine(np.zeros((50, 2)), *unit_evidence(units, 50, 3), 0.5, 1.0)
    with pytest.raises(ValueError, match=">= 0"):
        combine(np.zeros((50, 3)), *unit_evidence(units, 50, 3), -1.0, 1.0)
