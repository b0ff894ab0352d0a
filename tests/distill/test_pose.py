"""Pose co-alignment (distill/pose.py) and the aligned student (student.align=cube)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.config import StudentConfig, TrainConfig
from distill.labels import LabelSpace
from distill.pose import ROTATIONS, chamfer, choose, co_align, cube_rotations, rotation_costs, subsample
from distill.samples import prepare_samples
from distill.student import build_student
from distill.student.aligned import PoseAligned
from distill.training import distil

from .test_training import make_shape, make_units


def lopsided(n: int = 600, seed: int = 0) -> torch.Tensor:
    """(n, 3) a flat box with a lump in one corner: no rotation of the cube maps it onto
    itself, so its pose is well defined."""
    g = torch.Generator().manual_seed(seed)
    box = torch.rand(n - n // 5, 3, generator=g) * torch.tensor([1.0, 0.6, 0.3])
    lump = torch.rand(n // 5, 3, generator=g) * 0.15 + torch.tensor([0.85, 0.45, 0.2])
    pts = torch.cat([box, lump])
    return pts - pts.mean(0)


def turn(points: torch.Tensor, r: int) -> torch.Tensor:
    return points @ ROTATIONS[r].T


def test_cube_rotations_are_the_24_proper_ones_identity_first() -> None:
    rots = cube_rotations()
    assert rots.shape == (24, 3, 3)
    torch.testing.assert_close(rots[0], torch.eye(3))
    torch.testing.assert_close(rots @ rots.transpose(1, 2), torch.eye(3).expand(24, 3, 3))
    assert torch.all(torch.det(rots) > 0)
    assert len({tuple(r.flatten().tolist()) for r in rots}) == 24


def test_subsample_and_chamfer() -> None:
    pts = lopsided() + 5.0
    sub = subsample(pts, 100)
    assert sub.shape == (100, 3)
    torch.testing.assert_close(sub.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    assert float(chamfer(sub, sub)) < 1e-4  # cdist computes by matrix products: not exactly 0
    assert float(chamfer(sub, sub + 0.1)) > 0.0
    assert subsample(pts[:10], 30).shape == (30, 3)  # fewer points than asked: repeats
    with pytest.raises(ValueError, match="N >= 1, 3"):
        subsample(torch.zeros(10, 2), 5)


def test_rotation_costs_find_the_turn_back() -> None:
    ref = subsample(lopsided(), 256)
    for r in (3, 11, 23):
        costs = rotation_costs(turn(ref, r), ref[None])
        best = int(costs.argmin())
        assert float(costs[best]) < 1e-4
        torch.testing.assert_close(ROTATIONS[best] @ ROTATIONS[r], torch.eye(3))


def test_choose_keeps_the_pose_unless_clearly_better() -> None:
    assert choose(torch.tensor([1.0, 0.97, 2.0]), tol=0.05) == 0
    assert choose(torch.tensor([1.0, 0.9, 2.0]), tol=0.05) == 1
    assert choose(torch.tensor([0.5, 0.9, 2.0]), tol=0.05) == 0


def test_co_align_brings_turned_copies_into_one_pose() -> None:
    base = subsample(lopsided(), 200)
    turns = [0, 5, 9, 17, 22]
    clouds = torch.stack([turn(base, r) for r in turns])
    rot = co_align(clouds)
    aligned = [turn(c, int(r)) for c, r in zip(clouds, rot)]
    for a in aligned[1:]:
        assert float(chamfer(a, aligned[0])) < 1e-4
    assert co_align(clouds[:1]).tolist() == [0]


@pytest.fixture
def aligned_student(one_thread: None) -> PoseAligned:
    torch.manual_seed(0)
    model = build_student(StudentConfig(backbone="pointnet2", width=8, k=8, align="cube"), num_parts=3)
    assert isinstance(model, PoseAligned)
    return model.eval()


def test_unfitted_student_passes_clouds_through(aligned_student: PoseAligned) -> None:
    x = lopsided(512)[None]
    torch.testing.assert_close(aligned_student(x), aligned_student.inner(x))


def test_fitted_student_is_invariant_to_cube_rotations(aligned_student: PoseAligned) -> None:
    shape = lopsided(512)
    aligned_student.fit_references([turn(shape, r) for r in (0, 4, 13)], [0, 0, 0])
    assert int(aligned_student.ref_count[0]) == 3
    with torch.no_grad():
        logits = [aligned_student(turn(shape, r)[None]) for r in (0, 7, 19)]
    for other in logits[1:]:
        torch.testing.assert_close(other, logits[0], atol=1e-5, rtol=1e-5)


def test_references_travel_in_the_state_dict(aligned_student: PoseAligned) -> None:
    aligned_student.fit_references([lopsided(512, seed=s) for s in range(4)], [0, 0, 0, 0])
    state = aligned_student.state_dict()
    assert {"refs", "ref_count"} <= set(state)
    torch.manual_seed(1)
    fresh = build_student(StudentConfig(backbone="pointnet2", width=8, k=8, align="cube"), num_parts=3).eval()
    fresh.load_state_dict(state)
    x = turn(lopsided(512, seed=9), 6)[None]
    assert fresh.rotations(x, None).tolist() == aligned_student.rotations(x, None).tolist()
    torch.testing.assert_close(fresh(x), aligned_student(x))


def test_fit_references_checks_its_input(aligned_student: PoseAligned) -> None:
    with pytest.raises(ValueError, match="categories"):
        aligned_student.fit_references([lopsided(512)], [0, 0])
    with pytest.raises(ValueError, match="category index"):
        aligned_student.fit_references([lopsided(512)], [3])


def test_distil_fits_the_references_before_training(one_thread: None) -> None:
    rng = np.random.default_rng(0)
    shapes = [make_shape(rng, f"stack{i}") for i in range(4)]
    space = LabelSpace.from_shapes(shapes)
    samples = prepare_samples(shapes, {s.shape_id: make_units(rng, s) for s in shapes}, space, 128, 0)
    torch.manual_seed(0)
    model = build_student(StudentConfig(backbone="pointnet", width=8, k=8, align="cube"), space.num_slots)
    result = distil(model, samples, space, TrainConfig(epochs=1, batch_size=2, bd_rounds=0))
    assert int(result.model.ref_count[0]) == len(samples)  # 4 shapes, 5 reference slots


def test_config_rejects_unknown_alignment() -> None:
    from distill.config import ConfigError

    with pytest.raises(ConfigError, match="student.align"):
        StudentConfig(align="sphere")
