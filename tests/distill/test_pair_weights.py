"""Per-pair weights (point-level re-scoring) follow the (point, unit) pairs through resampling."""

import numpy as np
import pytest

from distill.labels import LabelSpace
from distill.records import KnowledgeUnits, Shape
from distill.samples import pairs_to_source, prepare_sample, resample_pairs, resample_units


def _shape_and_units(n=40, seed=0):
    rng = np.random.default_rng(seed)
    shape = Shape(
        shape_id="s0", category="chair", part_names=["back", "seat", "leg"],
        points=rng.normal(size=(n, 3)).astype(np.float32), source="test",
    )  # fmt: skip
    sizes = [12, 7, 15]
    idx = np.concatenate([rng.choice(n, k, replace=False) for k in sizes]).astype(np.int64)
    units = KnowledgeUnits(
        "s0", np.arange(3), np.array([0, 1, 2]), np.array([0.9, 0.5, 0.7], np.float32), idx,
        np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
    )  # fmt: skip
    return shape, units


def test_resample_pairs_copies_each_pair_to_the_new_positions_of_its_point():
    _, u = _shape_and_units()
    choice = np.array([3, 3, 7, 0, 39, 12, 7, 5], np.int64)
    new_idx, new_off, source = resample_pairs(u.point_idx, u.offsets, choice)
    np.testing.assert_array_equal(new_idx, resample_units(u.point_idx, u.offsets, choice)[0])
    # pair m' covers new point new_idx[m'], whose source point is the source pair's point
    np.testing.assert_array_equal(choice[new_idx], u.point_idx[source])
    unit_new = np.repeat(np.arange(3), np.diff(new_off))
    unit_src = np.repeat(np.arange(3), np.diff(u.offsets))
    np.testing.assert_array_equal(unit_new, unit_src[source])


@pytest.mark.parametrize("num_points", [25, 40, 64])  # drop points, keep all, repeat points
def test_pair_weights_round_trip_through_resampling(num_points):
    shape, u = _shape_and_units()
    space = LabelSpace(("chair",), (("back", "seat", "leg"),))
    w = np.random.default_rng(1).uniform(0.1, 2.0, len(u.point_idx)).astype(np.float32)
    s = prepare_sample(shape, u, space, num_points, seed=3, pair_weight=w)
    source = None if s.pair_source is None else s.pair_source.numpy()
    if num_points == 40:
        assert source is None  # not resampled: pair m is source pair m
    np.testing.assert_array_equal(s.pair_weight.numpy(), w if source is None else w[source])
    back = pairs_to_source(s.pair_weight.numpy(), source, len(w))
    kept = np.ones(len(w), bool) if source is None else np.bincount(source, minlength=len(w)) > 0
    np.testing.assert_allclose(back[kept], w[kept])
    np.testing.assert_array_equal(back[~kept], 1.0)  # a dropped point's pair never trains


def test_bad_pair_weights_are_refused():
    shape, u = _shape_and_units()
    space = LabelSpace(("chair",), (("back", "seat", "leg"),))
    with pytest.raises(ValueError, match="pair weights"):
        prepare_sample(shape, u, space, 30, pair_weight=np.ones(3, np.float32))
    with pytest.raises(ValueError, match="pair_source"):
        pairs_to_source(np.ones(5), np.zeros(4, np.int64), 5)
