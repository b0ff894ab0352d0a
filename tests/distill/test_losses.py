"""Forward-distillation loss and class weights; augmentation ranges."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distill.augment import augment
from distill.losses import class_weights, distillation_loss, distillation_loss_reference


def _units(sets: list[list[int]], labels: list[int], scores: list[float]):
    offsets = torch.tensor(np.concatenate([[0], np.cumsum([len(s) for s in sets])]), dtype=torch.long)
    idx = torch.tensor([i for s in sets for i in s], dtype=torch.long)
    return idx, offsets, torch.tensor(labels), torch.tensor(scores)


def _random_units(rng: np.random.Generator, t: int, s: int, k: int, groups: list[int] | None = None):
    """k units of random points (overlapping; the last 20% of points never covered)."""
    coverable = int(t * 0.8)
    sets = [sorted(rng.choice(coverable, rng.integers(1, coverable // 2), replace=False).tolist()) for _ in range(k)]
    labels = rng.integers(0, s, k).tolist()
    scores = rng.uniform(0.0, 1.0, k).round(3).tolist()
    scores[0] = 0.0  # a unit re-scored to 0 still counts as covering
    return _units(sets, labels, scores)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


# ---------------------------------------------------------------- class weights


def test_class_weights_known_values():
    # n = [30, 10, 0] coverage pairs, P = 3, total = 40.
    w = class_weights(torch.tensor([0, 0, 1]), torch.tensor([20, 10, 10]), num_slots=3)
    r1 = 40 / (3 * 10)
    assert w[0] == 1.0  # r0 = 40/90 < 1 → 1 + log4 r0 < 1 → clipped to 1
    assert w[1].item() == pytest.approx(1 + math.log(r1, 4))
    assert w[2] == 4.0  # absent label: r = inf → 4


def test_class_weights_clip_at_four():
    # One rare class among P = 8: r = total/(8·n) is large → weight clipped to 4.
    w = class_weights(torch.tensor([0, 1]), torch.tensor([10000, 1]), num_slots=8)
    assert w[1] == 4.0 and w[0] == 1.0


def test_class_weights_count_pairs_not_points():
    # The same 10 points covered by three units of label 0 count 30 times.
    w = class_weights(torch.tensor([0, 0, 0, 1]), torch.tensor([10, 10, 10, 10]), num_slots=2)
    assert w[1].item() == pytest.approx(1 + math.log(40 / (2 * 10), 4))
    assert w[0] == 1.0


def test_class_weights_per_category_groups():
    # Two categories: slots 0-1 (category 0), slots 2-4 (category 1); each is weighted
    # exactly as if alone.
    labels = torch.tensor([0, 1, 2, 3, 3])
    sizes = torch.tensor([10, 30, 5, 20, 20])
    w = class_weights(labels, sizes, 5, slot_group=torch.tensor([0, 0, 1, 1, 1]))
    w0 = class_weights(torch.tensor([0, 1]), torch.tensor([10, 30]), 2)
    w1 = class_weights(torch.tensor([0, 1, 1]), torch.tensor([5, 20, 20]), 3)
    torch.testing.assert_close(w, torch.cat([w0, w1]))


# ---------------------------------------------------------------- loss


def test_loss_hand_computed():
    # 4 points, 2 slots. Point 0: units A (label 0, score 1) and B (label 1, score 0.5);
    # point 1: A only; points 2, 3 uncovered. Class weights given as 1 and 2.
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, 5.0], [1.0, 3.0]])
    idx, off, lab, sc = _units([[0, 1], [0]], [0, 1], [1.0, 0.5])
    w = torch.tensor([1.0, 2.0])
    lp = F.log_softmax(logits, -1)
    want = ((-lp[0, 0] * 1.0 * 1.0 + -lp[0, 1] * 0.5 * 2.0) / 2 + -lp[1, 0]) / 4
    got = distillation_loss(logits, idx, off, lab, sc, class_weight=w)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def test_zero_score_unit_still_dilutes():
    # Point 0 covered by A (label 0, score 1) and B (label 1, score 0): ℓ = CE(z, 0) / 2.
    logits = torch.tensor([[1.0, -1.0]])
    idx, off, lab, sc = _units([[0], [0]], [0, 1], [1.0, 0.0])
    got = distillation_loss(logits, idx, off, lab, sc, class_weight=torch.ones(2))
    assert got.item() == pytest.approx(-F.log_softmax(logits, -1)[0, 0].item() / 2, rel=1e-6)


def test_uncovered_points_count_in_the_mean():
    logits = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    idx, off, lab, sc = _units([[0, 1, 2], [1, 4]], [0, 2], [0.9, 0.6])
    base = distillation_loss(logits, idx, off, lab, sc)
    padded = torch.cat([logits, torch.randn(30, 3)])  # 30 more points, none covered
    assert distillation_loss(padded, idx, off, lab, sc).item() == pytest.approx(base.item() * 10 / 40, rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_matches_reference_on_random_batches(seed):
    rng = np.random.default_rng(seed)
    b, n, s, k = 3, 17, 5, 12
    logits = torch.tensor(rng.normal(size=(b, n, s)), dtype=torch.float64, requires_grad=True)
    idx, off, lab, sc = _random_units(rng, b * n, s, k)
    fast = distillation_loss(logits, idx, off, lab, sc)
    ref_logits = logits.detach().clone().requires_grad_(True)
    ref = distillation_loss_reference(ref_logits, idx, off, lab, sc)
    assert fast.item() == pytest.approx(ref.item(), rel=1e-5)
    fast.backward()
    ref.backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad, rtol=1e-5, atol=1e-7)


def test_loss_matches_reference_with_category_groups():
    rng = np.random.default_rng(7)
    logits = torch.tensor(rng.normal(size=(40, 6)), dtype=torch.float64)
    idx, off, lab, sc = _random_units(rng, 40, 6, 9)
    group = torch.tensor([0, 0, 1, 1, 1, 2])
    fast = distillation_loss(logits, idx, off, lab, sc, slot_group=group)
    ref = distillation_loss_reference(logits, idx, off, lab, sc, slot_group=group)
    assert fast.item() == pytest.approx(ref.item(), rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_pair_weights_match_reference(seed):
    rng = np.random.default_rng(seed)
    logits = torch.tensor(rng.normal(size=(2, 15, 4)), dtype=torch.float64, requires_grad=True)
    idx, off, lab, sc = _random_units(rng, 30, 4, 10)
    pw = torch.tensor(rng.uniform(0, 2, size=idx.shape[0]))
    fast = distillation_loss(logits, idx, off, lab, sc, pair_weight=pw)
    ref_logits = logits.detach().clone().requires_grad_(True)
    ref = distillation_loss_reference(ref_logits, idx, off, lab, sc, pair_weight=pw)
    assert fast.item() == pytest.approx(ref.item(), rel=1e-5)
    fast.backward()
    ref.backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad, rtol=1e-5, atol=1e-7)
    # All-ones pair weights are no pair weights; a wrong length is refused.
    ones = distillation_loss(logits, idx, off, lab, sc, pair_weight=torch.ones(idx.shape[0]))
    assert ones.item() == pytest.approx(distillation_loss(logits, idx, off, lab, sc).item(), rel=1e-6)
    with pytest.raises(ValueError, match="pair_weight"):
        distillation_loss(logits, idx, off, lab, sc, pair_weight=torch.ones(idx.shape[0] + 1))


def test_pair_weight_zero_removes_only_that_pair():
    # Point 0 covered by A (label 0) and B (label 1); B's pair weighted 0: ℓ = CE(z, 0) / 2.
    logits = torch.tensor([[1.0, -1.0]])
    idx, off, lab, sc = _units([[0], [0]], [0, 1], [1.0, 1.0])
    got = distillation_loss(logits, idx, off, lab, sc, class_weight=torch.ones(2), pair_weight=torch.tensor([1.0, 0.0]))
    assert got.item() == pytest.approx(-F.log_softmax(logits, -1)[0, 0].item() / 2, rel=1e-6)


def test_loss_no_units_keeps_graph():
    logits = torch.randn(2, 5, 3, requires_grad=True)
    empty = torch.zeros(0, dtype=torch.long)
    loss = distillation_loss(logits, empty, torch.zeros(1, dtype=torch.long), empty, torch.zeros(0))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and (logits.grad == 0).all()


def test_loss_rejects_bad_units():
    logits = torch.randn(4, 2)
    idx, off, lab, sc = _units([[0, 9]], [0], [1.0])
    with pytest.raises(ValueError, match="point_idx outside"):
        distillation_loss(logits, idx, off, lab, sc)
    idx, off, lab, sc = _units([[0]], [5], [1.0])
    with pytest.raises(ValueError, match="unit_label outside"):
        distillation_loss(logits, idx, off, lab, sc)
    with pytest.raises(ValueError, match="offsets"):
        distillation_loss(logits, idx, off[:1], lab, sc)


# ---------------------------------------------------------------- augmentation


def test_augment_ranges():
    # Half the points at the origin, half at (1, 1, 1): per cloud, the mean of the first
    # half estimates the shift, the difference of the halves' means the per-axis scale.
    b, half = 64, 2000
    pts = torch.cat([torch.zeros(b, half, 3), torch.ones(b, half, 3)], 1)
    out, _ = augment(pts, torch.Generator().manual_seed(0))
    shift = out[:, :half].mean(1)
    scale = out[:, half:].mean(1) - shift
    assert shift.abs().max() <= 0.1 + 1e-3 and shift.abs().max() > 0.08
    assert scale.min() >= 0.9 - 1e-3 and scale.max() <= 1.1 + 1e-3
    assert scale.std() > 0.04  # really random per cloud and axis (uniform [0.9, 1.1]: σ ≈ 0.058)
    jitter = out[:, :half] - shift.unsqueeze(1)
    assert jitter.abs().max() <= 0.02 + 1e-3
    assert 0.008 < jitter.std() < 0.0105  # σ 0.01, slightly shrunk by the clip


def test_augment_is_seeded_and_keeps_normals_unit():
    pts = torch.randn(2, 50, 3)
    nrm = F.normalize(torch.randn(2, 50, 3), dim=-1)
    a, na = augment(pts, torch.Generator().manual_seed(5), nrm)
    b, nb = augment(pts, torch.Generator().manual_seed(5), nrm)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(na.norm(dim=-1), torch.ones(2, 50))
    c, _ = augment(pts, torch.Generator().manual_seed(6))
    assert not torch.allclose(a, c)
    with pytest.raises(ValueError, match="points"):
        augment(torch.zeros(5, 3), torch.Generator())


def test_corpus_class_weights_count_every_pair_of_the_samples():
    from distill.labels import LabelSpace
    from distill.losses import class_weights
    from distill.passes import corpus_class_weights
    from distill.records import KnowledgeUnits, Shape
    from distill.samples import collate, prepare_sample

    rng = np.random.default_rng(0)
    shapes = [Shape(f"{c}/{i}", c, ["a", "b", "c"], rng.normal(size=(32, 3))) for c in ("A", "B") for i in range(3)]
    space = LabelSpace.from_shapes(shapes)
    samples = []
    for s in shapes:
        sets = [rng.choice(32, size=int(rng.integers(1, 20)), replace=False) for _ in range(4)]
        u = KnowledgeUnits.from_lists(s.shape_id, [0] * 4, list(rng.integers(0, 3, 4)), [0.9] * 4, sets)
        samples.append(prepare_sample(s, u, space))
    batch = collate(samples)  # the whole corpus in one batch: the two counts agree
    sizes = batch.unit_offsets[1:] - batch.unit_offsets[:-1]
    expected = class_weights(batch.unit_slot, sizes, space.num_slots, space.slot_group())
    torch.testing.assert_close(corpus_class_weights(samples, space), expected)
