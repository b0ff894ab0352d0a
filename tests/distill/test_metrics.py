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


def test_category_mean_interval_covers_the_mean_and_narrows_with_shapes():
    from distill.metrics import category_mean_interval

    rng = np.random.default_rng(0)
    few = {"a": rng.normal(5, 4, 5), "b": rng.normal(-1, 4, 5)}
    many = {"a": rng.normal(5, 4, 500), "b": rng.normal(-1, 4, 500)}
    lo, hi = category_mean_interval(few)
    mean = np.mean([v.mean() for v in few.values()])
    assert lo < mean < hi
    lo2, hi2 = category_mean_interval(many)
    assert lo2 < 2.0 < hi2 and hi2 - lo2 < (hi - lo) / 3  # true mean 2; ~√100 narrower
    # Equal weight per category, whatever its count: one category of 1,000 shapes at +10 and
    # one of 3 at −10 has a mean over categories near 0, not near +10.
    lo3, hi3 = category_mean_interval({"big": np.full(1000, 10.0), "small": np.array([-10.0, -10.0, -10.0])})
    assert lo3 == hi3 == 0.0
    with pytest.raises(ValueError, match="every category"):
        category_mean_interval({"a": np.array([])})
