"""The simulated teacher: clean output, the glip_like error rates of docs/design.md §4, reproducibility."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from distill.cameras import cameras_from_angles
from distill.config import TeacherConfig
from distill.records import Shape
from distill.teachers import build_teacher
from distill.teachers.base import box_of_mask
from distill.teachers.simulated import GLIP_LIKE, SimulatedTeacher, box_mask, confusers, shrink_box_to_cover
from distill.views import RenderedViews

S = 100
PARTS = ["a", "b", "c", "d"]


def label_image() -> np.ndarray:
    """(S, S) part labels: a 50×50 shape; a = 60 %, b = 30 %, c = 3 % (small), d = 0.3 %
    (below the 0.5 % detection floor), the rest unlabelled shape pixels."""
    img = np.full((S, S), -1, np.int16)
    img[20:70, 20:70] = 0  # 2500 shape pixels
    img[20:35, 20:70] = 1  # 750 = 30 %
    img[60:70, 20:27] = 2  # 70 ≈ 2.8 %
    img[68:70, 60:64] = 3  # 8 ≈ 0.3 %
    img[45:47, 40:44] = -1  # shape pixels without a label
    return img


def make_views(num_views: int = 10) -> RenderedViews:
    labels = np.repeat(label_image()[None], num_views, 0)
    depth = np.full((num_views, S, S), np.inf, np.float32)
    depth[:, 20:70, 20:70] = 2.0
    return RenderedViews(
        images=np.full((num_views, S, S, 3), 255, np.uint8),
        depth=depth,
        pixel_labels=labels,
        point_uv=np.zeros((num_views, 1, 2), np.float32),
        point_visible=np.zeros((num_views, 1), bool),
        cameras=cameras_from_angles(np.zeros((num_views, 2)), 2.2, S, 50.0),
    )


def shape(shape_id: str = "s0", category: str = "cat") -> Shape:
    return Shape(shape_id, category, PARTS, np.zeros((1, 3), np.float32))


def teacher(
    preset: str = "glip_like", output: str = "box", seed: int = 0, correlation: float = 0.0, **errors
) -> SimulatedTeacher:
    """Independent views unless asked: the rate tests count views as independent samples."""
    cfg = TeacherConfig(preset=preset, output=output, view_correlation=correlation)
    t = SimulatedTeacher(cfg, seed=seed)
    if errors:
        t.errors = dataclasses.replace(GLIP_LIKE, **errors)
    return t


NO_ERRORS = dict(
    miss=0.0, miss_small_extra=0.0, random_confusion=0.0, systematic_confusion=0.0, false_positive=0.0, whole_object=0.0
)


@pytest.mark.parametrize("output", ["box", "mask"])
def test_clean_preset_is_exact(output):
    views = make_views(2)
    preds = teacher("clean", output).predict(views, shape())
    img = label_image()
    for p in preds:
        np.testing.assert_array_equal(p.labels, [0, 1, 2])  # d is below the 0.5 % floor
        np.testing.assert_array_equal(p.scores, [1.0, 1.0, 1.0])
        for k, lab in enumerate(p.labels):
            if output == "box":
                np.testing.assert_array_equal(p.boxes[k], box_of_mask(img == lab))
            else:
                np.testing.assert_array_equal(p.masks[k], img == lab)


def test_registry_builds_the_simulated_teacher():
    t = build_teacher(TeacherConfig(name="simulated", output="mask"), seed=3)
    assert isinstance(t, SimulatedTeacher) and t.name == "simulated" and t.output == "mask" and t.seed == 3


def test_reproducible_per_seed_and_shape():
    views = make_views()
    a = teacher(seed=1).predict(views, shape("x"))
    b = teacher(seed=1).predict(views, shape("x"))
    for pa, pb in zip(a, b):
        np.testing.assert_array_equal(pa.labels, pb.labels)
        np.testing.assert_array_equal(pa.boxes, pb.boxes)

    def flat(preds):
        return np.concatenate([p.boxes.ravel() for p in preds])

    assert not np.array_equal(flat(a), flat(teacher(seed=1).predict(views, shape("y"))))
    assert not np.array_equal(flat(a), flat(teacher(seed=2).predict(views, shape("x"))))
    # Box and mask outputs consume the same draws: the same parts are kept with the same labels.
    m = teacher(seed=1, output="mask").predict(views, shape("x"))
    for pa, pm in zip(a, m):
        np.testing.assert_array_equal(pa.labels, pm.labels)


def test_confusers_are_fixed_per_category_and_never_the_part():
    c = confusers(0, "chair", 6)
    assert (c != np.arange(6)).all() and ((c >= 0) & (c < 6)).all()
    np.testing.assert_array_equal(c, confusers(0, "chair", 6))
    assert any(not np.array_equal(confusers(s, "chair", 6), c) for s in range(1, 5))
    assert confusers(0, "mug", 1).tolist() == [-1]


def _collect(t: SimulatedTeacher, n_shapes: int = 60):
    views = make_views()
    return [p for i in range(n_shapes) for p in t.predict(views, shape(f"s{i}"))]


def test_miss_rates():
    preds = _collect(teacher(**{**NO_ERRORS, "miss": 0.25, "miss_small_extra": 0.25}))
    n = len(preds)  # 600 views
    counts = np.bincount(np.concatenate([p.labels for p in preds]), minlength=4)
    assert counts[0] / n == pytest.approx(0.75, abs=0.05)
    assert counts[1] / n == pytest.approx(0.75, abs=0.05)
    assert counts[2] / n == pytest.approx(0.50, abs=0.06)  # small part: 0.25 + 0.25
    assert counts[3] == 0


def test_confusion_rates_and_scores():
    t = teacher(**{**NO_ERRORS, "random_confusion": 0.10, "systematic_confusion": 0.15, "box_jitter": 0.0})
    conf = t.confusers("cat", 4)
    img = label_image()
    wrong = systematic = total = 0
    for p in _collect(t):
        for k, lab in enumerate(p.labels):
            # Recover the true part from the (unjittered) box.
            truth = next(q for q in range(3) if np.array_equal(p.boxes[k], box_of_mask(img == q)))
            total += 1
            if lab != truth:
                wrong += 1
                systematic += lab == conf[truth]
                assert 0.5 <= p.scores[k] <= 0.8
            else:
                assert 0.5 <= p.scores[k] <= 0.95
    assert total == 1800
    assert wrong / total == pytest.approx(0.25, abs=0.03)
    # Systematic (0.15) plus the random confusions that happen to pick the confuser (0.10 / 3).
    assert systematic / total == pytest.approx(0.15 + 0.10 / 3, abs=0.03)


def test_box_jitter_bounds():
    img = label_image()
    preds = _collect(teacher(**NO_ERRORS), n_shapes=10)
    moved = []
    for p in preds:
        for k, lab in enumerate(p.labels):
            tight = box_of_mask(img == lab)
            size = np.array([tight[2] - tight[0], tight[3] - tight[1]] * 2)
            rel = (p.boxes[k] - tight) / size
            assert (np.abs(rel) <= 0.15 + 1e-6).all()
            moved.append(rel)
    moved = np.array(moved)
    assert np.abs(moved).max() > 0.12 and abs(moved.mean()) < 0.02  # uses the range, unbiased


def test_mask_dilation_erosion_within_three_pixels():
    img = label_image()
    preds = _collect(teacher(output="mask", **NO_ERRORS), n_shapes=5)
    sizes = set()
    for p in preds:
        for k, lab in enumerate(p.labels):
            part = img == lab
            outer = ndimage.binary_dilation(part, iterations=3)
            inner = ndimage.binary_erosion(part, iterations=3)
            assert not (p.masks[k] & ~outer).any() and not (inner & ~p.masks[k]).any()
            sizes.add(int(p.masks[k].sum()) - int(part.sum()))
    assert min(sizes) < 0 < max(sizes)  # both eroded and dilated masks occur


def test_false_positive_rate_and_whole_object_boxes_are_filtered():
    fp = _collect(teacher(**{**NO_ERRORS, "false_positive": 0.2}), n_shapes=200)
    extra = sum(len(p) - 3 for p in fp)
    assert extra / len(fp) == pytest.approx(0.2, abs=0.03)  # 2000 views: σ ≈ 0.009
    shape_mask = label_image() >= 0
    shape_mask[45:47, 40:44] = True
    total = shape_mask.sum()
    for output in ("box", "mask"):
        whole = _collect(teacher(output=output, **{**NO_ERRORS, "whole_object": 1.0}))
        assert all(len(p) == 4 for p in whole)  # the near-whole-object box survives the filter
        for p in whole:
            region = p.masks[3] if output == "mask" else box_mask(p.boxes[3], shape_mask.shape)
            assert 0.84 * total <= (region & shape_mask).sum() <= 0.97 * total
    for output in ("box", "mask"):
        for p in _collect(teacher(output=output), n_shapes=20):
            if output == "mask":
                covered = [(m & shape_mask).sum() for m in p.masks]
            else:
                b = np.round(p.boxes).astype(int)
                covered = [shape_mask[y0:y1, x0:x1].sum() for x0, y0, x1, y1 in b]
            assert all(c < 0.98 * total for c in covered)
            assert (p.scores >= 0.5).all()


def test_shrink_box_to_cover_matches_a_brute_force_search():
    rng = np.random.default_rng(3)
    for _ in range(5):
        mask = np.zeros((64, 64), bool)
        mask[rng.integers(0, 20) : rng.integers(40, 64), rng.integers(0, 20) : rng.integers(40, 64)] = True
        mask &= rng.random(mask.shape) < 0.9
        box = np.array(box_of_mask(mask), np.float64)
        cover = rng.uniform(0.85, 0.97)
        got = shrink_box_to_cover(box, mask, cover)
        assert (mask & box_mask(got, mask.shape)).sum() <= cover * mask.sum()
        # The slow reference: the smallest shrink on the same 1/256 grid that fits.
        centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2] * 2)
        for t in np.arange(257) / 256:
            ref = centre + (box - centre) * (1 - t)
            if (mask & box_mask(ref, mask.shape)).sum() <= cover * mask.sum():
                break
        np.testing.assert_allclose(got, ref, atol=1e-4)


def test_score_threshold_is_applied():
    t = SimulatedTeacher(TeacherConfig(preset="glip_like", score_threshold=0.8), seed=0)
    preds = [p for i in range(20) for p in t.predict(make_views(), shape(f"s{i}"))]
    scores = np.concatenate([p.scores for p in preds])
    assert len(scores) > 50 and (scores >= 0.8).all()


def test_bad_config_raises():
    cfg = TeacherConfig()
    cfg.preset = "x"  # bypasses the config's own check
    with pytest.raises(ValueError, match="preset"):
        SimulatedTeacher(cfg)


def _outcomes(t: SimulatedTeacher, n_shapes: int) -> np.ndarray:
    """(shapes, views, parts a..c) int: −1 missed, else the label its box got (boxes of a
    part recovered from their unjittered extent; no false positives or whole boxes)."""
    img = label_image()
    truth_boxes = [box_of_mask(img == q) for q in range(3)]
    out = np.full((n_shapes, 10, 3), -1)
    for i in range(n_shapes):
        for v, p in enumerate(t.predict(make_views(), shape(f"s{i}"))):
            for k, lab in enumerate(p.labels):
                truth = next(q for q in range(3) if np.array_equal(p.boxes[k], truth_boxes[q]))
                out[i, v, truth] = lab
    return out


CORRELATED_ERRORS = {**NO_ERRORS, "miss": 0.25, "miss_small_extra": 0.25, "random_confusion": 0.10,
                     "systematic_confusion": 0.15, "box_jitter": 0.0}  # fmt: skip


@pytest.mark.parametrize("correlation", [0.0, 0.5, 1.0])
def test_view_correlation_keeps_the_per_view_error_rates(correlation):
    out = _outcomes(teacher(correlation=correlation, **CORRELATED_ERRORS), 400)
    missed = (out == -1).mean(axis=(0, 1))
    wrong = ((out != -1) & (out != np.arange(3))).sum(axis=(0, 1)) / (out != -1).sum(axis=(0, 1))
    # 4,000 views a part; at ρ = 1 only the 400 shapes are independent (std ≈ 0.022 on 0.75).
    assert missed[:2] == pytest.approx([0.25, 0.25], abs=0.06)
    assert missed[2] == pytest.approx(0.50, abs=0.07)
    assert wrong == pytest.approx([0.25] * 3, abs=0.06)


def test_view_correlation_makes_the_views_of_a_shape_agree():
    def agreement(correlation: float) -> float:
        """Mean over shapes and parts of the fraction of view pairs with the same outcome."""
        out = _outcomes(teacher(correlation=correlation, **CORRELATED_ERRORS), 60)
        pairs = out[:, :, None, :] == out[:, None, :, :]  # (shapes, v, v, parts)
        off = ~np.eye(10, dtype=bool)
        return float(pairs[:, off].mean())

    a0, a5, a8, a1 = (agreement(r) for r in (0.0, 0.5, 0.8, 1.0))
    assert a0 < a5 < a8 < a1
    assert a1 == 1.0  # every view where the part is visible: the same outcome
    # Independent views agree by chance only: P(same) = Σ_outcome P(outcome)² ≈ 0.38 here.
    assert a0 < 0.5


def test_view_correlation_is_deterministic_and_shares_with_masks():
    views = make_views()
    a = teacher(seed=3, correlation=0.8).predict(views, shape("x"))
    b = teacher(seed=3, correlation=0.8).predict(views, shape("x"))
    m = teacher(seed=3, correlation=0.8, output="mask").predict(views, shape("x"))
    for pa, pb, pm in zip(a, b, m):
        np.testing.assert_array_equal(pa.boxes, pb.boxes)
        np.testing.assert_array_equal(pa.labels, pm.labels)


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
def test_view_correlation_outside_unit_interval_is_a_config_error(value):
    from distill.config import ConfigError

    with pytest.raises(ConfigError, match=r"teacher\.view_correlation"):
        TeacherConfig(view_correlation=value)
