"""The fast student operators against their reference twins, the per-shape pose, and the
CUDA paths (run where a GPU exists, skipped with a reason elsewhere)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.augment import augment
from distill.config import ConfigError, StudentConfig, TrainConfig
from distill.passes import autocast, forward_logits, pose_rotations, train_epoch
from distill.pose import ROTATIONS, choose, choose_batched, rotation_costs, rotation_costs_batched, subsample
from distill.student import build_student
from distill.student.aligned import PoseAligned
from distill.student.ops import (
    ball_query,
    farthest_point_sample,
    farthest_point_sample_dense,
    farthest_point_sample_reference,
    fast_operators,
    gather,
    knn,
    knn_dense,
    knn_kdtree,
    knn_reference,
    three_nn_interpolate,
    use_reference_operators,
)

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device here: the CUDA paths run only where a GPU exists")


def _cloud(b: int, n: int, seed: int = 0, d: int = 3) -> torch.Tensor:
    return torch.randn(b, n, d, generator=torch.Generator().manual_seed(seed))


def lopsided(n: int = 512, seed: int = 0) -> torch.Tensor:
    """(n, 3) a flat box with a lump in one corner (no cube symmetry), centred."""
    g = torch.Generator().manual_seed(seed)
    box = torch.rand(n - n // 5, 3, generator=g) * torch.tensor([1.0, 0.6, 0.3])
    lump = torch.rand(n // 5, 3, generator=g) * 0.15 + torch.tensor([0.85, 0.45, 0.2])
    pts = torch.cat([box, lump])
    return pts - pts.mean(0)


def _assert_knn_close(idx: torch.Tensor, q: torch.Tensor, r: torch.Tensor, k: int, max_mismatch: float) -> None:
    """Indices equal to ``knn_reference`` except between near-ties: the sorted distances
    agree, and at most ``max_mismatch`` of the indices differ."""
    want = knn_reference(q.numpy(), r.numpy(), k)
    got_d = ((q.double().unsqueeze(2) - gather(r.double(), idx)) ** 2).sum(-1)
    want_d = ((q.double().unsqueeze(2) - gather(r.double(), torch.from_numpy(want))) ** 2).sum(-1)
    torch.testing.assert_close(got_d, want_d, atol=1e-6, rtol=1e-6)
    assert float((idx.numpy() != want).mean()) <= max_mismatch


# ---------------------------------------------------------------- FPS


@pytest.mark.parametrize(("b", "n", "m"), [(3, 60, 12), (2, 2048, 512), (4, 513, 128), (1, 5, 5)])
def test_fps_is_bit_identical_to_the_dense_twin(b: int, n: int, m: int) -> None:
    x = _cloud(b, n, seed=n)
    np.testing.assert_array_equal(farthest_point_sample(x, m).numpy(), farthest_point_sample_dense(x, m).numpy())
    start = torch.arange(b) % n
    np.testing.assert_array_equal(
        farthest_point_sample(x, m, start).numpy(), farthest_point_sample_dense(x, m, start).numpy()
    )


def test_fps_matches_the_slow_reference_and_handles_duplicates() -> None:
    x = _cloud(2, 50, 7)
    np.testing.assert_array_equal(farthest_point_sample(x, 10).numpy(), farthest_point_sample_reference(x.numpy(), 10))
    dup = torch.cat([x, x], 1)  # every point twice: ties broken by the lowest index, as the twin
    np.testing.assert_array_equal(farthest_point_sample(dup, 30).numpy(), farthest_point_sample_dense(dup, 30).numpy())
    with pytest.raises(ValueError, match="m=0"):
        farthest_point_sample(x, 0)
    with pytest.raises(ValueError, match="xyz"):
        farthest_point_sample(torch.zeros(5, 3), 2)


# ---------------------------------------------------------------- kNN


@pytest.mark.parametrize(("m", "n", "k"), [(37, 50, 5), (128, 512, 32), (300, 64, 3), (20, 30, 1)])
def test_kdtree_knn_matches_the_reference(m: int, n: int, k: int) -> None:
    q, r = _cloud(2, m, 1), _cloud(2, n, 2)
    idx, dist = knn_kdtree(q, r, k)
    assert idx.shape == dist.shape == (2, m, k) and idx.dtype == torch.long and dist.dtype == torch.float32
    _assert_knn_close(idx, q, r, k, max_mismatch=1e-3)
    exact = ((q.unsqueeze(2) - gather(r, idx)) ** 2).sum(-1)
    torch.testing.assert_close(dist, exact)
    assert bool((dist[..., 1:] >= dist[..., :-1]).all())  # nearest first
    d_idx, d_dist = knn_dense(q, r, k)
    assert float((idx != d_idx).float().mean()) <= 1e-3
    torch.testing.assert_close(dist, d_dist, atol=1e-5, rtol=1e-4)


def test_knn_dispatch_and_self_first() -> None:
    x = _cloud(2, 200, 3)
    assert fast_operators()
    idx, dist = knn(x, x, 4)  # 3-D on the CPU: the KD-tree
    np.testing.assert_array_equal(idx[..., 0].numpy(), np.broadcast_to(np.arange(200), (2, 200)))
    assert (dist[..., 0] == 0).all()
    f = _cloud(1, 40, 4, d=16)  # feature space: the dense path, exactly the reference
    np.testing.assert_array_equal(knn(f, f, 4)[0].numpy(), knn_reference(f.numpy(), f.numpy(), 4))
    with use_reference_operators():
        assert not fast_operators()
        np.testing.assert_array_equal(knn(x, x, 4)[0].numpy(), knn_dense(x, x, 4)[0].numpy())
    assert fast_operators()
    with pytest.raises(ValueError, match="k=9"):
        knn(_cloud(1, 5), _cloud(1, 8), 9)
    with pytest.raises(ValueError, match="batch"):
        knn_kdtree(_cloud(1, 5), _cloud(2, 8), 2)


def test_knn_on_repeated_points_gives_equal_distances() -> None:
    # Resampled shapes repeat points (fewer points than asked): exact ties, any order.
    x = _cloud(1, 100, 5)
    x = torch.cat([x, x[:, :40]], 1)
    idx, dist = knn(x[:, :60], x, 6)
    _, want = knn_dense(x[:, :60], x, 6)
    torch.testing.assert_close(dist, want, atol=1e-5, rtol=1e-4)


def test_ball_query_and_interpolation_agree_with_the_reference_operators() -> None:
    xyz = _cloud(2, 1024, 6) * 0.5
    centres = gather(xyz, farthest_point_sample(xyz, 256))
    feat = _cloud(2, 256, 7, d=8)
    fast_idx = ball_query(centres, xyz, 0.2, 16)
    three = three_nn_interpolate(xyz, centres, feat)
    with use_reference_operators():
        ref_idx = ball_query(centres, xyz, 0.2, 16)
        ref_three = three_nn_interpolate(xyz, centres, feat)
    assert float((fast_idx != ref_idx).float().mean()) <= 1e-3
    torch.testing.assert_close(three, ref_three, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="radius"):
        ball_query(centres, xyz, 0.0, 4)


@pytest.mark.parametrize("name", ["pointnet2", "dgcnn", "dgcnn_static", "pointnet"])
def test_students_agree_on_both_paths(name: str) -> None:
    torch.manual_seed(0)
    model = build_student(StudentConfig(backbone=name, width=8, k=6, dropout=0.0), num_parts=3)
    x = _cloud(2, 256, 8)
    with torch.no_grad():
        model.train()
        fast_train = model(x)  # train-mode forward (batch statistics), in-place activations
        model.eval()
        fast = model(x)
        with use_reference_operators():
            ref = model(x)
            model.train()
            ref_train = model(x)
    torch.testing.assert_close(fast, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast_train, ref_train, atol=1e-4, rtol=1e-4)
    # Gradients flow through the in-place activations.
    model.train()
    model(x).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------- pose


def test_batched_rotation_costs_equal_the_per_cloud_loop() -> None:
    g = torch.Generator().manual_seed(0)
    clouds = subsample(torch.randn(6, 700, 3, generator=g) * torch.tensor([1.0, 0.5, 0.2]), 128)
    refs = subsample(torch.randn(4, 700, 3, generator=g) * torch.tensor([0.5, 1.0, 0.2]), 128)
    counts = torch.tensor([4, 3, 2, 1, 0, 4])
    got = rotation_costs_batched(clouds, refs.expand(6, -1, -1, -1), counts)
    assert got.shape == (6, 24)
    for i, c in enumerate(counts.tolist()):
        want = rotation_costs(clouds[i], refs[:c]) if c else torch.zeros(24)
        torch.testing.assert_close(got[i], want, atol=1e-5, rtol=1e-5)
    shared = rotation_costs_batched(clouds, refs)  # one (K, m, 3) set for every cloud
    torch.testing.assert_close(shared[[0, 5]], got[[0, 5]])
    assert choose_batched(got).tolist() == [choose(row) for row in got]
    with pytest.raises(ValueError, match="refs"):
        rotation_costs_batched(clouds, refs[None].expand(2, -1, -1, -1))


def test_batched_choice_equals_the_reference_loop() -> None:
    model = PoseAligned(torch.nn.Identity(), num_categories=2)
    model.fit_references([lopsided(512, s) @ ROTATIONS[s].T for s in range(3)] + [lopsided(512, 9)], [0, 0, 0, 1])
    x = torch.stack([lopsided(512, 20 + r) @ ROTATIONS[r].T for r in (0, 3, 7, 11, 19, 23)])
    cat = torch.tensor([0, 1, 0, 1, 0, 0])
    assert model.rotations(x, cat).tolist() == model.rotations_reference(x, cat).tolist()
    assert model.rotations(x, None).tolist() == model.rotations_reference(x, None).tolist()


def _aligned(**kw: object) -> PoseAligned:
    torch.manual_seed(0)
    model = build_student(StudentConfig(backbone="pointnet2", width=8, k=6, align="cube", **kw), num_parts=3)
    assert isinstance(model, PoseAligned)
    return model


def test_shape_rotations_are_remembered_and_forgotten_with_the_references() -> None:
    model = _aligned().eval()
    x = torch.stack([lopsided(512, 30 + r) @ ROTATIONS[r].T for r in (0, 5, 13)])
    assert model.shape_rotations(x, None) is None  # not fitted: nothing to choose
    model.fit_references([lopsided(512, s) for s in range(3)], [0, 0, 0])
    rot = model.shape_rotations(x, None)
    assert rot.tolist() == model.rotations_reference(x, None).tolist()
    assert len(model._chosen) == 3
    model.shape_rotations(x[:2], None)
    assert len(model._chosen) == 3  # looked up, not chosen again
    with torch.no_grad():
        torch.testing.assert_close(model(x, rotation=rot), model(x))  # carried == chosen in the forward
    with use_reference_operators():
        assert model.shape_rotations(x, None) is None  # the reference path re-chooses every forward
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert not any("chosen" in k for k in state)
    model.load_state_dict(state)  # the same references written again (as DDP's buffer broadcast): kept
    model.shape_rotations(x[:1], None)
    assert len(model._chosen) == 3
    state["refs"][0, 0] += 0.01  # other references: the memory goes
    model.load_state_dict(state)
    model.shape_rotations(x[:1], None)
    assert len(model._chosen) == 1
    model.fit_references([lopsided(512, s) for s in range(2)], [0, 0])
    assert len(model._chosen) == 0
    with pytest.raises(ValueError, match="rotation"):
        model(x, rotation=torch.zeros(2, dtype=torch.long))


def test_train_epoch_chooses_on_the_raw_clouds_once_per_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    from distill.labels import LabelSpace
    from distill.samples import epoch_batches, prepare_samples

    from .test_training import make_shape, make_units

    rng = np.random.default_rng(0)
    shapes = [make_shape(rng, f"stack{i}") for i in range(4)]
    space = LabelSpace.from_shapes(shapes)
    samples = prepare_samples(shapes, {s.shape_id: make_units(rng, s) for s in shapes}, space, 128, 0)
    model = build_student(StudentConfig(backbone="pointnet", width=8, k=8, align="cube"), space.num_slots)
    model.fit_references([s.points for s in samples], [s.category for s in samples])
    seen: list[torch.Tensor] = []
    choose_for = model.rotations
    monkeypatch.setattr(model, "rotations", lambda xyz, cat: seen.append(xyz.clone()) or choose_for(xyz, cat))
    opt = torch.optim.Adam(model.parameters())
    for epoch in range(2):
        batches = epoch_batches(samples, 2, 0, epoch)
        train_epoch(model, opt, None, batches, "cpu", space, torch.Generator().manual_seed(epoch))
    chosen = torch.cat(seen)
    assert chosen.shape[0] == len(samples)  # once per shape over both epochs, all in epoch 0
    raw = {tuple(s.points[0].tolist()) for s in samples}
    assert {tuple(c[0].tolist()) for c in chosen} == raw  # the un-augmented clouds


def _pose_invariant_under_augmentation(shapes: list, draws: int = 3) -> tuple[int, list[str]]:
    """Fit the references per category as ``distil`` does, then compare the choice on each
    raw cloud with the choice on ``draws`` augmented copies → (shapes, those that differ)."""
    model = PoseAligned(torch.nn.Identity(), num_categories=len({s.category for s in shapes}))
    cats = {c: i for i, c in enumerate(sorted({s.category for s in shapes}))}
    clouds = [torch.from_numpy(np.asarray(s.points, np.float32)) for s in shapes]
    labels = [cats[s.category] for s in shapes]
    model.fit_references(clouds, labels)
    g = torch.Generator().manual_seed(0)
    differ = []
    for shape, cloud, c in zip(shapes, clouds, labels):
        cat = torch.tensor([c])
        raw = model.shape_rotations(cloud[None], cat)
        for _ in range(draws):
            turned, _ = augment(cloud[None], g)
            if model.rotations(turned, cat).tolist() != raw.tolist():
                differ.append(shape.shape_id)
                break
    return len(shapes), differ


def test_pose_of_procedural_shapes_is_the_pose_of_their_augmented_copies() -> None:
    from generation.procedural import ALL_CATEGORIES, make_shape

    shapes = [make_shape(c, i, 0, 1024) for c in ALL_CATEGORIES for i in range(4)]
    n, differ = _pose_invariant_under_augmentation(shapes)
    assert n == 4 * len(ALL_CATEGORIES) and differ == []


def test_pose_of_psb_shapes_is_the_pose_of_their_augmented_copies() -> None:
    from distill.config import DataConfig
    from distill.readers import iter_items
    from tests.conftest import shared_data

    root = str(shared_data("labeled_psb"))
    shapes = [item.load() for item in iter_items(DataConfig(source="psb", path=root, per_category=4), seed=0)]
    n, differ = _pose_invariant_under_augmentation(shapes)
    assert n == len(shapes) > 0 and differ == []


# ---------------------------------------------------------------- config, amp


def test_amp_is_a_config_key_and_bf16_keeps_the_geometry_float32() -> None:
    assert TrainConfig().amp == "none"
    assert TrainConfig(amp="bf16").amp == "bf16"
    with pytest.raises(ConfigError, match="train.amp"):
        TrainConfig(amp="fp8")
    with pytest.raises(ValueError, match="amp"):
        autocast("cpu", "fp16")
    x = _cloud(2, 256, 9)
    with autocast("cpu", "bf16"):
        idx, dist = knn_dense(x, x, 4)
        assert dist.dtype == torch.float32
        np.testing.assert_array_equal(idx.numpy(), knn_reference(x.numpy(), x.numpy(), 4))
        np.testing.assert_array_equal(farthest_point_sample(x, 32).numpy(), farthest_point_sample_dense(x, 32).numpy())
        costs = rotation_costs_batched(subsample(x, 64), subsample(x[:1], 64)[0][None])
        assert costs.dtype == torch.float32
    model = _aligned()
    model.fit_references([lopsided(256, s) for s in range(3)], [0, 0, 0])
    with autocast("cpu", "bf16"):
        out = model(torch.stack([lopsided(256, 7)]))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_forward_logits_passes_the_rotation() -> None:
    from distill.labels import LabelSpace
    from distill.samples import collate, prepare_samples

    from .test_training import make_shape

    rng = np.random.default_rng(1)
    shapes = [make_shape(rng, f"s{i}") for i in range(2)]
    space = LabelSpace.from_shapes(shapes)
    samples = prepare_samples(shapes, {}, space, 128, 0)
    model = build_student(StudentConfig(backbone="pointnet", width=8, k=8, align="cube"), space.num_slots).eval()
    model.fit_references([s.points for s in samples], [0, 0])
    batch = collate(samples)
    rot = pose_rotations(model, batch)
    assert rot is not None and rot.shape == (2,)
    with torch.no_grad():
        torch.testing.assert_close(forward_logits(model, batch, space, rot), forward_logits(model, batch, space))
    plain = build_student(StudentConfig(backbone="pointnet", width=8, k=8), space.num_slots)
    assert pose_rotations(plain, batch) is None


# ---------------------------------------------------------------- CUDA


@needs_cuda
def test_cuda_operators_match_the_cpu() -> None:
    x = _cloud(2, 2048, 10)
    xc = x.cuda()
    np.testing.assert_array_equal(farthest_point_sample(xc, 512).cpu().numpy(), farthest_point_sample(x, 512).numpy())
    centres = gather(x, farthest_point_sample(x, 512))
    idx, dist = knn(centres.cuda(), xc, 16)
    assert idx.is_cuda and dist.is_cuda
    _assert_knn_close(idx.cpu(), centres, x, 16, max_mismatch=1e-3)
    b = ball_query(centres.cuda(), xc, 0.2, 16)
    assert b.is_cuda and float((b.cpu() != ball_query(centres, x, 0.2, 16)).float().mean()) <= 1e-3
    feat = _cloud(2, 512, 11, d=8)
    torch.testing.assert_close(
        three_nn_interpolate(xc, centres.cuda(), feat.cuda()).cpu(),
        three_nn_interpolate(x, centres, feat),
        atol=1e-4,
        rtol=1e-4,
    )


@needs_cuda
@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_cuda_student_trains_with_the_pose_carried(amp: str) -> None:
    model = _aligned().cuda()
    model.fit_references([lopsided(512, s).cuda() for s in range(3)], [0, 0, 0])
    x = torch.stack([lopsided(512, 40 + r) @ ROTATIONS[r].T for r in (0, 6, 17)])
    rot = model.shape_rotations(x.cuda(), None)
    assert rot.tolist() == model.rotations_reference(x, None).tolist()
    with autocast("cuda", amp):
        out = model(x.cuda(), rotation=rot)
    out.float().square().mean().backward()
    assert out.is_cuda and torch.isfinite(out.float()).all()
