"""Students and their point operators: shapes, invariants, fast-vs-reference agreement."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
import torch

from distill.config import ConfigError, StudentConfig
from distill.student import STUDENTS, build_student, load_pretrained_encoder
from distill.student.ops import (
    ball_query,
    farthest_point_sample,
    farthest_point_sample_reference,
    gather,
    knn,
    knn_reference,
    three_nn_interpolate,
)
from distill.student.pretrained import check_encoder_bundle, encoder_bundle, freeze_encoder, read_encoder_file

TINY = {"width": 8, "k": 6}


def _cloud(b: int, n: int, seed: int = 0, d: int = 3) -> torch.Tensor:
    return torch.randn(b, n, d, generator=torch.Generator().manual_seed(seed))


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


# ---------------------------------------------------------------- ops


def test_knn_matches_reference_across_chunks():
    q, r = _cloud(2, 37, 1), _cloud(2, 50, 2)
    want = knn_reference(q.numpy(), r.numpy(), 5)
    for chunk in (1, 2 * 50 * 3, 1 << 24):  # one row per chunk, a few rows, everything at once
        idx, dist = knn(q, r, 5, chunk_entries=chunk)
        assert idx.shape == (2, 37, 5)
        np.testing.assert_array_equal(idx.numpy(), want)
        exact = ((q.unsqueeze(2) - gather(r, idx)) ** 2).sum(-1)
        torch.testing.assert_close(dist, exact, atol=1e-5, rtol=1e-5)


def test_knn_in_feature_space_and_self_first():
    x = _cloud(1, 40, 3, d=16)
    idx, dist = knn(x, x, 4)
    np.testing.assert_array_equal(idx[..., 0].numpy(), np.arange(40)[None])  # each point is its own nearest
    np.testing.assert_array_equal(idx.numpy(), knn_reference(x.numpy(), x.numpy(), 4))
    assert (dist[..., 0] < 1e-4).all()


def test_knn_rejects_bad_input():
    with pytest.raises(ValueError, match="k=9"):
        knn(_cloud(1, 5), _cloud(1, 8), 9)
    with pytest.raises(ValueError, match="batch"):
        knn(_cloud(1, 5), _cloud(2, 8), 2)
    with pytest.raises(ValueError, match="query"):
        knn(torch.zeros(5, 3), _cloud(1, 8), 2)


def test_farthest_point_sample_matches_reference():
    x = _cloud(3, 60, 4)
    got = farthest_point_sample(x, 12)
    np.testing.assert_array_equal(got.numpy(), farthest_point_sample_reference(x.numpy(), 12))
    assert all(len(set(row)) == 12 for row in got.tolist())  # distinct points


def test_farthest_point_sample_spreads_out():
    # Two tight clusters far apart: the second pick must come from the other cluster.
    a = torch.randn(1, 20, 3) * 0.01
    x = torch.cat([a, a + 10.0], 1)
    idx = farthest_point_sample(x, 2)
    assert idx[0, 0] == 0 and idx[0, 1] >= 20


def test_ball_query_pads_with_nearest():
    ref = torch.tensor([[[0.0, 0, 0], [0.1, 0, 0], [5.0, 0, 0], [6.0, 0, 0]]])
    q = torch.tensor([[[0.0, 0, 0]]])
    idx = ball_query(q, ref, radius=0.5, k=3)
    assert idx.tolist() == [[[0, 1, 0]]]  # the far points are replaced by the nearest (0)
    idx = ball_query(q, ref, radius=0.5, k=6)  # more than N: padded too
    assert idx.shape == (1, 1, 6) and set(idx.flatten().tolist()) == {0, 1}


def test_gather_and_interpolation():
    x = _cloud(2, 10, 5, d=4)
    idx = torch.tensor([[[1, 2], [9, 0]], [[3, 3], [4, 5]]])
    g = gather(x, idx)
    assert g.shape == (2, 2, 2, 4)
    torch.testing.assert_close(g[1, 1, 0], x[1, 4])
    torch.testing.assert_close(g[0, 0, 1], x[0, 2])
    # Interpolating at the sparse points themselves returns their features.
    xyz = _cloud(2, 10, 6)
    torch.testing.assert_close(three_nn_interpolate(xyz, xyz, x), x, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- students


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_student_output_shape_and_grad(name):
    torch.manual_seed(0)
    model = build_student(StudentConfig(backbone=name, **TINY), num_parts=5)
    xyz = _cloud(2, 128, 7)
    out = model(xyz)
    assert out.shape == (2, 128, 5)
    out.logsumexp(-1).mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(_cloud(1, 100, 8))).all()  # any N, batch of one


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_student_with_normals_and_categories(name):
    torch.manual_seed(0)
    model = build_student(StudentConfig(backbone=name, use_normals=True, **TINY), num_parts=7, num_categories=3)
    xyz = _cloud(2, 64, 9)
    normals = torch.nn.functional.normalize(_cloud(2, 64, 10), dim=-1)
    out = model(xyz, normals=normals, category=torch.tensor([0, 2]))
    assert out.shape == (2, 64, 7)
    with pytest.raises(ValueError, match="category"):
        model(xyz, normals=normals)
    with pytest.raises(ValueError, match="normals"):
        model(xyz, category=torch.tensor([0, 2]))


@pytest.mark.parametrize("name", ["pointnet", "dgcnn", "dgcnn_static"])
def test_student_is_permutation_equivariant(name):
    # PointNet and DGCNN treat points as a set (PointNet++ is not: FPS starts at index 0).
    torch.manual_seed(0)
    model = build_student(StudentConfig(backbone=name, **TINY), num_parts=3).eval()
    xyz = _cloud(1, 80, 11)
    perm = torch.randperm(80, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(xyz)[:, perm], model(xyz[:, perm]), atol=1e-4, rtol=1e-4)


def test_width_scales_parameters():
    small = build_student(StudentConfig(backbone="dgcnn", width=8), 4)
    big = build_student(StudentConfig(backbone="dgcnn", width=16), 4)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(big) > 3 * count(small)


def test_unknown_backbone():
    with pytest.raises(ValueError, match="student.backbone='nope'"):
        build_student(StudentConfig(backbone="nope"), 4)


def _bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_pretrained_encoder_bundle_round_trip():
    cfg = StudentConfig(backbone="pointnet2", **TINY)
    torch.manual_seed(0)
    src = build_student(cfg, 4)
    bundle = read_encoder_file(_bytes(encoder_bundle(src.encoder, cfg, 1024, shapes=7)), "enc.pt")
    assert bundle["shapes"] == 7 and bundle["num_points"] == 1024
    check_encoder_bundle(bundle, cfg, 1024, "enc.pt")
    torch.manual_seed(1)
    dst = build_student(cfg, 6)
    report = load_pretrained_encoder(dst, bundle, "enc.pt")
    assert report.loaded == sorted(dst.encoder.state_dict()) and not report.missing
    for k, v in src.encoder.state_dict().items():
        torch.testing.assert_close(dst.encoder.state_dict()[k], v)
    assert not torch.equal(dst.head.out.weight[:4], src.head.out.weight)  # the head stays fresh


@pytest.mark.parametrize(
    ("change", "match"),
    [({"width": 16}, "width=8.*width=16"), ({"k": 4}, "k=6.*k=4"), ({"backbone": "dgcnn"}, "backbone='pointnet2'")],
)
def test_pretrained_encoder_of_other_settings_refused(change, match):
    cfg = StudentConfig(backbone="pointnet2", **TINY)
    bundle = encoder_bundle(build_student(cfg, 4).encoder, cfg, 1024)
    with pytest.raises(ConfigError, match=match):
        check_encoder_bundle(bundle, replace(cfg, **change), 1024, "enc.pt")
    with pytest.raises(ConfigError, match="num_points=1024.*num_points=2048"):
        check_encoder_bundle(bundle, cfg, 2048, "enc.pt")


def test_pretrained_plain_state_dict_must_be_whole():
    cfg = StudentConfig(backbone="pointnet2", **TINY)
    src = build_student(cfg, 4)
    state = dict(src.state_dict())  # a whole student's: "encoder." prefix, head keys dropped
    state["encoder.extra.weight"] = torch.zeros(3)
    report = load_pretrained_encoder(build_student(cfg, 6), state, "student.pt")
    assert report.unexpected == ["extra.weight"]
    del state["encoder.fp1.mlp.0.linear.weight"]
    with pytest.raises(ConfigError, match="1 tensors missing.*fp1.mlp.0.linear.weight"):
        load_pretrained_encoder(build_student(cfg, 6), state, "student.pt")
    narrow = {"model": build_student(StudentConfig(backbone="pointnet", width=8), 4).state_dict()}
    with pytest.raises(ConfigError, match="does not fit this PointNetEncoder"):
        load_pretrained_encoder(build_student(StudentConfig(backbone="pointnet", width=16), 4), narrow, "n.pt")


def test_unreadable_encoder_file():
    with pytest.raises(ConfigError, match="'bad.pt' is not a readable checkpoint"):
        read_encoder_file(b"not a checkpoint", "bad.pt")


def test_frozen_encoder_is_left_out_of_training():
    from distill.config import TrainConfig
    from distill.passes import make_optimizer

    model = build_student(StudentConfig(backbone="pointnet2", **TINY), 4)
    assert freeze_encoder(model) == len(list(model.encoder.parameters()))
    opt, _ = make_optimizer(model, TrainConfig(epochs=1), 2)
    trained = {id(p) for g in opt.param_groups for p in g["params"]}
    assert trained == {id(p) for p in model.head.parameters()}
    with pytest.raises(ConfigError, match="freezes a random encoder"):
        StudentConfig(freeze_encoder=True)


def test_category_conditioned_encoder():
    from distill.config import StudentConfig
    from distill.student import build_student

    torch.manual_seed(0)
    model = build_student(StudentConfig(width=8, k=4, category_input=True), num_parts=5, num_categories=2)
    xyz = torch.randn(2, 64, 3)
    a = model(xyz, category=torch.tensor([0, 0]))
    b = model(xyz, category=torch.tensor([1, 1]))
    assert a.shape == (2, 64, 5) and not torch.allclose(a, b)
    with pytest.raises(ValueError, match="pointnet2 option"):
        build_student(StudentConfig(backbone="dgcnn", category_input=True), num_parts=5, num_categories=2)
