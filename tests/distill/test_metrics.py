import numpy as np
import pytest

from distill.metrics import MIoUTable, part_ious, shape_miou


def test_hand_computed_ious():
    truth = np.array([0, 0, 1, 1, 2, -1])
    pred = np.array([0, 1, 1, 1, 2, 0])
    # part 0: inter 1, union 2 -> .5; part 1: inter 2, union 3 -> 2/3; part 2: 1/1; unlabelled point excluded
    np.testing.assert_allclose(part_ious(pred, truth, 3), [0.5, 2 / 3, 1.0])
    assert shape_miou(pred, truth, 3) == pytest.approx((0.5 + 2 / 3 + 1) / 3 * 100)


def test_part_absent_from_both_scores_one():
    truth = np.array([0, 0, 1])
    np.testing.assert_allclose(part_ious(truth, truth, 4), [1, 1, 1, 1])
    # predicted but absent from truth: IoU 0
    np.testing.assert_allclose(part_ious(np.array([0, 0, 3]), truth, 4), [1, 0, 1, 0])


def test_unpredicted_points_count_as_wrong():
    truth = np.array([0, 0, 1, 1])
    pred = np.array([0, -1, 1, -1])
    np.testing.assert_allclose(part_ious(pred, truth, 2), [0.5, 0.5])


def test_table_means():
    t = MIoUTable()
    t.add("a", "chair", np.array([0, 1]), np.array([0, 1]), 2)  # 100
    t.add("b", "chair", np.array([1, 1]), np.array([0, 1]), 2)  # (0 + .5)/2 = 25
    t.add("c", "lamp", np.array([0]), np.array([0]), 1)  # 100
    assert t.per_category() == {"chair": 62.5, "lamp": 100.0}
    assert t.category_mean() == pytest.approx(81.25)
    assert t.shape_mean() == pytest.approx(75.0)
    assert t.summary()["num_shapes"] == 3


def test_bad_input():
    with pytest.raises(ValueError):
        part_ious(np.zeros(3), np.zeros(4), 2)
