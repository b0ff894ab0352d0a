"""Backward distillation: re-scoring, the plateau rule and the re-scoring decision."""

from __future__ import annotations

import numpy as np
import pytest

from distill.config import TrainConfig
from distill.records import KnowledgeUnits
from distill.rescore import (
    knowledge_agreement,
    plateau_reached,
    rescore,
    rescore_reference,
    should_rescore,
)


def _units(sets, labels, scores=None, round=0) -> KnowledgeUnits:
    scores = scores if scores is not None else [0.9] * len(labels)
    return KnowledgeUnits.from_lists(
        "s", [0] * len(labels), labels, scores, [np.asarray(p, np.int64) for p in sets], teacher="t", round=round
    )


def test_rescore_known_values():
    pred = np.array([0, 0, 1, 1, 2, 2])
    u = _units([[0, 1, 2, 3], [2, 3, 4], [5], []], [0, 1, 0, 2], round=2)
    out = rescore(u, pred)
    np.testing.assert_allclose(out.score, [0.5, 2 / 3, 0.0, 0.0], rtol=1e-6)  # empty unit → 0
    assert out.round == 3 and out.score.dtype == np.float32
    np.testing.assert_array_equal(out.point_idx, u.point_idx)  # only the scores change
    np.testing.assert_array_equal(out.label, u.label)
    assert out.teacher == "t"


@pytest.mark.parametrize("seed", range(4))
def test_rescore_matches_reference(seed):
    rng = np.random.default_rng(seed)
    n, parts = 200, 4
    pred = rng.integers(0, parts, n)
    sets = [rng.choice(n, rng.integers(0, 60), replace=False) for _ in range(25)]
    u = _units(sets, rng.integers(0, parts, 25).tolist(), rng.uniform(0.5, 1, 25).tolist())
    np.testing.assert_allclose(rescore(u, pred).score, rescore_reference(u, pred).score, rtol=1e-6)


def test_rescore_rejects_short_prediction():
    with pytest.raises(ValueError, match="pred has 3 points"):
        rescore(_units([[0, 5]], [0]), np.zeros(3, np.int64))
    with pytest.raises(ValueError, match=r"\(N,\)"):
        rescore(_units([[0]], [0]), np.zeros((2, 3), np.int64))


def test_knowledge_agreement_weights_by_score():
    pred = np.array([0, 0, 1, 1])
    u = _units([[0, 1], [2, 3]], [0, 0], [1.0, 0.5])  # unit 0 fully right, unit 1 fully wrong
    hits, total = knowledge_agreement(u, pred)
    assert (hits, total) == pytest.approx((2.0, 3.0))


# ---------------------------------------------------------------- plateau rule


def test_plateau_needs_min_epochs():
    flat = [0.5] * 10
    assert not plateau_reached(flat[:4])
    assert plateau_reached(flat[:5])


def test_plateau_moving_average_rule():
    # Falling by 0.05 per epoch: the 5-epoch average moves 0.05 per epoch → no plateau.
    falling = [1.0 - 0.05 * i for i in range(12)]
    assert not any(plateau_reached(falling[:e]) for e in range(1, 13))
    # Then flat: once the window holds only flat values the average stops moving, and one
    # epoch before that it moves by 0.01 · ... (still ≥ delta).
    losses = falling[:6] + [0.75] * 6
    got = [plateau_reached(losses[:e]) for e in range(1, 13)]
    assert got[:6] == [False] * 6
    # e=7: window [0.95..0.75, 0.75] mean 0.81 vs prior 0.85 → 0.04 ≥ 0.01: no.
    assert got[6] is False
    assert got[-1] is True


def test_plateau_small_wiggles_and_delta():
    wiggle = [1.0, 0.8, 0.7, 0.65, 0.64, 0.645, 0.641, 0.643, 0.642, 0.644]
    assert plateau_reached(wiggle)  # the average moves by 0.0008
    assert not plateau_reached(wiggle[:7])  # still falling: it moves by 0.03
    assert not plateau_reached(wiggle, delta=0.0005)


def test_plateau_early_epochs_compare_with_zero():
    # The code starts the previous average at 0: a tiny loss plateaus as soon as allowed.
    assert plateau_reached([0.001], min_epochs=1)
    assert not plateau_reached([0.5], min_epochs=1)


# ---------------------------------------------------------------- decision


def test_should_rescore_epoch_trigger():
    cfg = TrainConfig(epochs=30, bd_rounds=2, bd_trigger="epoch", bd_epoch=10)
    assert not should_rescore(9, [], cfg, rounds_done=0)
    assert should_rescore(10, [], cfg, rounds_done=0)
    assert not should_rescore(15, [], cfg, rounds_done=1)
    assert should_rescore(20, [], cfg, rounds_done=1)
    assert not should_rescore(25, [], cfg, rounds_done=2)  # rounds used up


def test_should_rescore_plateau_trigger_and_limits():
    cfg = TrainConfig(epochs=20, bd_rounds=1, bd_trigger="plateau")
    flat = [0.3] * 6
    assert should_rescore(6, flat, cfg, rounds_done=0)
    assert not should_rescore(6, flat[:3], cfg, rounds_done=0)  # too few epochs since the last round
    assert not should_rescore(6, flat, cfg, rounds_done=1)
    assert not should_rescore(20, flat, cfg, rounds_done=0)  # the last epoch: nothing left to train
    assert not should_rescore(6, flat, TrainConfig(epochs=20, bd_rounds=0), rounds_done=0)
    with pytest.raises(ValueError, match="epoch=0"):
        should_rescore(0, flat, cfg, 0)
