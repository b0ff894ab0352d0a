"""Superpoints for the student: pooled targets, pooled predictions, the consistency term
and online self-training (distill/pooling.py, distill/losses.py, distill/regularisers.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.config import ConfigError, TrainConfig
from distill.ema import WeightAverage
from distill.labels import LabelSpace
from distill.losses import confident_target_loss, distillation_loss, superpoint_consistency
from distill.pooling import point_evidence, pool_log_probs, pool_units, pool_units_reference
from distill.records import KnowledgeUnits, Shape
from distill.regularisers import regulariser, teacher_probs
from distill.samples import collate, prepare_sample


def units(sets: list[list[int]], labels: list[int], scores: list[float], views: list[int] | None = None):
    views = views if views is not None else list(range(len(sets)))
    return KnowledgeUnits.from_lists("s", views, labels, scores, [np.array(p, np.int64) for p in sets])


def random_units(rng: np.random.Generator, n: int, p: int, k: int) -> KnowledgeUnits:
    sets = [rng.choice(n, size=int(rng.integers(1, n // 2)), replace=False) for _ in range(k)]
    return KnowledgeUnits.from_lists(
        "s", list(range(k)), rng.integers(0, p, k).tolist(), rng.uniform(0.1, 1, k).tolist(), sets
    )


def test_pooled_units_hand_computed():
    # Superpoints {0,1,2} and {3,4,5}; point 5 is covered by nothing.
    sp = np.array([0, 0, 0, 1, 1, 1])
    u = units([[0, 1, 3], [2, 4]], [0, 1], [1.0, 0.5])
    pooled = pool_units(u, sp, 2)
    got = {(int(pooled.label[k]), tuple(pooled.unit_points(k))): float(pooled.score[k]) for k in range(len(pooled))}
    # Superpoint 0: e = (1,0), (1,0), (0,.5) over 3 covered points → (2/3, 1/6).
    # Superpoint 1: e = (1,0), (0,.5) over 2 covered points (5 is not) → (1/2, 1/4).
    assert got == pytest.approx(
        {(0, (0, 1, 2)): 2 / 3, (1, (0, 1, 2)): 1 / 6, (0, (3, 4, 5)): 0.5, (1, (3, 4, 5)): 0.25}
    )
    assert (pooled.view == -1).all()
    # The uncovered point 5 now learns its superpoint's evidence; the loss weighs it so.
    logits = torch.zeros(6, 2, requires_grad=True)
    loss = distillation_loss(logits, torch.as_tensor(pooled.point_idx), torch.as_tensor(pooled.offsets),
                             torch.as_tensor(pooled.label), torch.as_tensor(pooled.score), torch.ones(2))  # fmt: skip
    loss.backward()
    assert logits.grad[5].abs().sum() > 0


@pytest.mark.parametrize("seed", range(5))
def test_pooled_units_match_reference(seed):
    rng = np.random.default_rng(seed)
    n, p = 40, 4
    sp = rng.integers(0, 7, n)
    sp = np.unique(sp, return_inverse=True)[1]  # ids 0..S-1
    u = random_units(rng, n, p, 9)
    fast, slow = pool_units(u, sp, p), pool_units_reference(u, sp, p)
    assert fast.label.tolist() == slow.label.tolist()
    np.testing.assert_allclose(fast.score, slow.score, rtol=1e-6)
    np.testing.assert_array_equal(fast.offsets, slow.offsets)
    np.testing.assert_array_equal(fast.point_idx, slow.point_idx)


def test_pooling_keeps_the_evidence_mass_of_a_uniform_superpoint():
    # One superpoint, every point covered by the same unit: pooling changes nothing.
    u = units([[0, 1, 2, 3]], [1], [0.7])
    pooled = pool_units(u, np.zeros(4, np.int64), 3)
    assert pooled.label.tolist() == [1] and pooled.score.tolist() == pytest.approx([0.7])
    e, covering = point_evidence(u, 4, 3)
    assert covering.tolist() == [1, 1, 1, 1] and e[:, 1].tolist() == pytest.approx([0.7] * 4)


def test_pooling_outvotes_a_bleeding_box():
    # A box of part 1 bleeds over 2 of the 10 points of part 0's superpoint; part 0's
    # units cover all 10. Pooled, the whole superpoint leans to part 0.
    sp = np.zeros(10, np.int64)
    u = units([list(range(10)), list(range(10)), [8, 9]], [0, 0, 1], [1.0, 1.0, 1.0])
    pooled = pool_units(u, sp, 2)
    score = dict(zip(pooled.label.tolist(), pooled.score.tolist()))
    assert score[0] > 4 * score[1]


def test_pooling_with_pair_weights_and_empty_units():
    sp = np.array([0, 0, 1, 1])
    u = units([[0, 1, 2]], [0], [1.0])
    pooled = pool_units(u, sp, 1, pair_weight=np.array([1.0, 0.0, 1.0]))
    assert pooled.score.tolist() == pytest.approx([0.5, 1.0])
    assert len(pool_units(KnowledgeUnits.empty("s"), sp, 2)) == 0


def test_pooling_refuses_a_mismatched_superpoint_column():
    u = units([[0, 5]], [0], [1.0])
    with pytest.raises(ValueError, match="re-run ingest"):
        pool_units(u, np.array([0, 0, -1, 1, 1, 1]), 2)
    with pytest.raises(ValueError, match="outside"):
        pool_units(u, np.array([0, 0, 1]), 2)
    with pytest.raises(ValueError, match="re-run ingest"):
        pool_log_probs(np.zeros((4, 2)), np.zeros(3, np.int64), "shape-x")


def test_pooled_predictions():
    lp = np.log(np.array([[0.9, 0.1], [0.4, 0.6], [0.45, 0.55], [0.2, 0.8]]))
    # Superpoint 0 = points 0..2: mean log p favours part 0 although 2 of 3 points say 1.
    assert pool_log_probs(lp, np.array([0, 0, 0, 1])).tolist() == [0, 0, 0, 1]
    assert pool_log_probs(lp, np.arange(4)).tolist() == lp.argmax(1).tolist()


def test_superpoint_consistency():
    sp = torch.tensor([0, 0, 1, 1])
    same = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 3.0], [0.0, 3.0]], requires_grad=True)
    split = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 3.0], [0.0, 3.0]], requires_grad=True)
    agreeing, disagreeing = superpoint_consistency(same, sp), superpoint_consistency(split, sp)
    assert disagreeing > agreeing
    disagreeing.backward()
    # The gradient pulls the two points of superpoint 0 towards each other only.
    assert split.grad[0, 1] < 0 < split.grad[1, 1]
    with pytest.raises(ValueError, match="one id per point"):
        superpoint_consistency(same, sp[:3])


def test_confident_target_loss():
    logits = torch.zeros(3, 2)
    probs = torch.tensor([[0.95, 0.05], [0.6, 0.4], [0.0, 1.0]])
    # Points 0 and 2 are confident: CE(0, uniform) = log 2 each, averaged over 3 points.
    assert float(confident_target_loss(logits, probs, 0.9)) == pytest.approx(2 * np.log(2) / 3)
    assert float(confident_target_loss(logits, probs, 1.01)) == 0.0


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)
        self.bn = torch.nn.BatchNorm1d(2)

    def forward(self, points, normals=None, category=None):
        z = self.lin(points)
        return self.bn(z.transpose(1, 2)).transpose(1, 2)


def tiny_batch(n: int = 8, with_superpoints: bool = True):
    rng = np.random.default_rng(0)
    shapes = [
        Shape(
            f"s{i}",
            "Box",
            ["a", "b"],
            rng.normal(size=(n, 3)).astype(np.float32),
            superpoints=np.repeat(np.arange(n // 4), 4) if with_superpoints else None,
        )  # fmt: skip
        for i in range(2)
    ]
    space = LabelSpace(("Box",), (("a", "b"),))
    samples = [prepare_sample(s, None, space) for s in shapes]
    return collate(samples), space


def test_batches_carry_superpoints_unique_per_batch():
    batch, _ = tiny_batch()
    assert batch.superpoints.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]
    assert tiny_batch(with_superpoints=False)[0].superpoints is None


def test_mean_teacher_reads_the_average_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = Tiny()
    average = WeightAverage(model, 0.5)
    with torch.no_grad():
        model.lin.weight.add_(1.0)  # the student moves away from its average
    batch, space = tiny_batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probs = teacher_probs(model, average, batch, space, None)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # weights and BatchNorm statistics untouched
    with torch.no_grad():
        saved = {k: p.clone() for k, p in model.named_parameters()}
        average.copy_to(model)
        expected = torch.softmax(model(batch.points), -1)
        for k, p in model.named_parameters():
            p.copy_(saved[k])
    assert torch.allclose(probs, expected, atol=1e-5)


def test_regulariser_terms_and_errors():
    model = Tiny()
    batch, space = tiny_batch()
    assert regulariser(TrainConfig(), model, None, space, 10) is None
    extra = regulariser(TrainConfig(superpoint_consistency=1.0), model, None, space, 10)
    logits = model(batch.points).detach()
    assert float(extra(logits, batch, None)) == pytest.approx(float(superpoint_consistency(logits, batch.superpoints)))
    no_sp, _ = tiny_batch(with_superpoints=False)
    with pytest.raises(ValueError, match="carries no superpoints"):
        extra(logits, no_sp, None)
    average = WeightAverage(model, 0.9)
    mt = regulariser(TrainConfig(ema=0.9, mean_teacher=1.0, mean_teacher_threshold=0.0), model, average, space, 10)
    assert float(mt(logits, batch, None)) == 0.0  # step 0: the ramp is at 0
    average.steps = 5
    assert float(mt(logits, batch, None)) > 0.0
    with pytest.raises(ConfigError, match="train.ema"):
        TrainConfig(mean_teacher=1.0)
    with pytest.raises(ConfigError, match="mean_teacher_threshold"):
        TrainConfig(ema=0.9, mean_teacher=1.0, mean_teacher_threshold=1.5)
