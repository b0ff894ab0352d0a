"""Backward distillation: re-scoring, the plateau rule and the re-scoring decision."""

from __future__ import annotations

import numpy as np
import pytest

from distill.config import TrainConfig
from distill.records import KnowledgeUnits
from distill.rescore import (
    balance_part_mass,
    balance_part_mass_reference,
    crossfit_folds,
    crossfit_select,
    knowledge_agreement,
    pair_probability,
    pair_probability_reference,
    plateau_reached,
    rescore,
    rescore_reference,
    rescore_rule,
    rescore_rule_reference,
    should_rescore,
    unit_precision,
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


# ---------------------------------------------------------------- re-scoring rules


def _random_case(seed: int, n: int = 120, parts: int = 4, k: int = 18):
    rng = np.random.default_rng(seed)
    sets = [rng.choice(n, rng.integers(0, 40), replace=False) for _ in range(k)]
    u = KnowledgeUnits.from_lists(
        "shape", rng.integers(0, 10, k).tolist(), rng.integers(0, parts, k).tolist(),
        rng.uniform(0.5, 1, k).tolist(), [np.asarray(p, np.int64) for p in sets], teacher="t",
    )  # fmt: skip
    probs = [rng.dirichlet(np.ones(parts), size=n).astype(np.float32) for _ in range(2)]
    return u, probs


@pytest.mark.parametrize("rule", ["agreement", "crossfit", "point", "crossfit_point"])
@pytest.mark.parametrize("seed", range(3))
def test_rescore_rule_matches_reference(rule, seed):
    u, probs = _random_case(seed)
    fold = crossfit_folds(u, 2, "view", seed)
    probs = probs if rule.startswith("crossfit") else probs[:1]
    score, rel = rescore_rule(rule, u, probs, fold)
    ref_score, ref_rel = rescore_rule_reference(rule, u, probs, fold)
    np.testing.assert_allclose(score, ref_score, rtol=1e-5, atol=1e-7)
    if rule in ("agreement", "crossfit"):
        assert rel is None and ref_rel is None
    else:
        np.testing.assert_allclose(rel, ref_rel, rtol=1e-5, atol=1e-6)
        # score × relative weight gives back each pair's probability of its unit's label
        pair = crossfit_select(u, [pair_probability(u, p) for p in probs], fold) if len(probs) > 1 else None
        pair = pair if pair is not None else pair_probability(u, probs[0])
        np.testing.assert_allclose(np.repeat(score, np.diff(u.offsets)) * rel, pair, rtol=1e-5, atol=1e-6)


def test_agreement_rule_is_the_papers_rescore():
    u, probs = _random_case(5)
    score, _ = rescore_rule("agreement", u, probs[:1])
    np.testing.assert_allclose(score, rescore(u, probs[0].argmax(1)).score, rtol=1e-6)


def test_crossfit_scores_each_unit_by_the_other_folds_snapshot():
    # Two units of label 0 on the same points; snapshot 0 says 0 everywhere, snapshot 1 says 1.
    u = KnowledgeUnits.from_lists("s", [0, 1], [0, 0], [0.9, 0.9], [np.arange(4), np.arange(4)], teacher="t")
    says0 = np.tile([[1.0, 0.0]], (4, 1))
    says1 = np.tile([[0.0, 1.0]], (4, 1))
    score, _ = rescore_rule("crossfit", u, [says0, says1], np.array([0, 1]))
    np.testing.assert_allclose(score, [1.0, 0.0])


def test_pair_probability_matches_reference():
    u, probs = _random_case(7)
    np.testing.assert_allclose(pair_probability(u, probs[0]), pair_probability_reference(u, probs[0]))
    with pytest.raises(ValueError, match=r"\(N, P\)"):
        pair_probability(u, probs[0][:, 0])


def test_unit_precision_is_agreement_with_the_truth():
    u, _ = _random_case(3)
    truth = np.random.default_rng(0).integers(0, 4, 120)
    np.testing.assert_allclose(unit_precision(u, truth), rescore(u, truth).score)


@pytest.mark.parametrize("by", ["view", "shape"])
def test_crossfit_folds_are_deterministic_and_balanced(by):
    u, _ = _random_case(1, k=60)
    a, b = crossfit_folds(u, 2, by, seed=3), crossfit_folds(u, 2, by, seed=3)
    np.testing.assert_array_equal(a, b)
    assert set(a.tolist()) <= {0, 1}
    for v in np.unique(u.view):  # a view is never split between folds
        assert len(set(a[u.view == v].tolist())) == 1
    if by == "shape":
        assert len(set(a.tolist())) == 1
    else:
        per_view = {int(v): int(a[u.view == v][0]) for v in np.unique(u.view)}
        counts = np.bincount(list(per_view.values()), minlength=2)
        assert abs(int(counts[0]) - int(counts[1])) <= 1  # views dealt round-robin
    with pytest.raises(ValueError, match="folds"):
        crossfit_folds(u, 1, by)


def test_rescore_rule_refuses_bad_inputs():
    u, probs = _random_case(2)
    with pytest.raises(ValueError, match="unknown"):
        rescore_rule("nope", u, probs[:1])
    with pytest.raises(ValueError, match="snapshots"):
        rescore_rule("crossfit", u, probs[:1], np.zeros(len(u), np.int64))
    with pytest.raises(ValueError, match="one snapshot"):
        rescore_rule("agreement", u, probs)


@pytest.mark.parametrize("seed", range(3))
def test_balance_part_mass_matches_reference_and_keeps_mass(seed):
    rng = np.random.default_rng(seed)
    shapes = [int(rng.integers(1, 12)) for _ in range(5)]
    labels = [rng.integers(0, 4, k) for k in shapes]
    sizes = [rng.integers(0, 50, k) for k in shapes]
    old = [rng.uniform(0.1, 0.3, k) for k in shapes]
    new = [rng.uniform(0.3, 0.9, k) for k in shapes]  # factors < 1: no clipping at 1
    got = balance_part_mass(labels, sizes, old, new)
    ref = balance_part_mass_reference(labels, sizes, old, new)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)
    lab, size = np.concatenate(labels), np.concatenate(sizes)
    o, g = np.concatenate(old), np.concatenate(got)
    for y in np.unique(lab):
        m = lab == y
        if (size[m] * np.concatenate(new)[m]).sum() > 0:
            assert (size[m] * g[m]).sum() == pytest.approx((size[m] * o[m]).sum(), rel=1e-4)
