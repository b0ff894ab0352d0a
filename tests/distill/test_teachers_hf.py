"""The Hugging Face teachers on tiny random-weight models built offline (tests/distill/tiny_models.py).

Random weights predict nothing meaningful, so these tests check the contract (one
filtered ``ViewPrediction`` per view, shapes, dtypes, ranges, thresholds, batching) and
the pure helpers (prompts, phrase → part, token spans, NMS, masks) on known values.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.config import TeacherConfig
from distill.records import Shape
from distill.teachers import build_teacher
from distill.teachers.base import ViewPrediction
from distill.teachers.clipseg import masks_from_probs
from distill.teachers.grounding_dino import part_scores
from distill.teachers.hf_common import (
    TeacherModelError,
    box_iou,
    build_prompts,
    check_model_source,
    clip_boxes,
    detection_caption,
    detections,
    finish,
    match_phrase,
    nms,
    resolve_device,
    token_parts,
    view_batches,
)
from distill.views import Cameras, RenderedViews
from tests.distill.tiny_models import (
    bert_tokenizer,
    build_tiny_clipseg,
    build_tiny_grounding_dino,
    build_tiny_owlv2,
    build_tiny_sam,
    clip_tokenizer,
)

SIZE = 64
PARTS = ["nose cone", "wing", "front_leg", "back leg"]


def fake_views(num_views: int = 3, size: int = SIZE) -> RenderedViews:
    """Grey squares on white, a different square per view; depth finite on the square."""
    images = np.full((num_views, size, size, 3), 255, np.uint8)
    depth = np.full((num_views, size, size), np.inf, np.float32)
    for v in range(num_views):
        a, b = 8 + 4 * (v % 5), 40 + 4 * (v % 5)
        images[v, a:b, a - 4 : b - 4] = 110 + 20 * (v % 5)
        depth[v, a:b, a - 4 : b - 4] = 1.0
    cameras = Cameras(
        eye=np.zeros((num_views, 3), np.float32),
        world_to_cam=np.tile(np.eye(4, dtype=np.float32), (num_views, 1, 1)),
        focal=np.full(num_views, 50.0, np.float32),
        image_size=size,
        elev_azim=np.zeros((num_views, 2), np.float32),
    )
    n = 8
    return RenderedViews(
        images=images,
        depth=depth,
        pixel_labels=np.full((num_views, size, size), -1, np.int16),
        point_uv=np.zeros((num_views, n, 2), np.float32),
        point_visible=np.zeros((num_views, n), bool),
        cameras=cameras,
    )


def fake_shape() -> Shape:
    return Shape("s0", "Airplane", PARTS, np.random.default_rng(0).normal(size=(8, 3)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {
        "owlv2": build_tiny_owlv2(str(root / "owlv2"), seed=0),
        "clipseg": build_tiny_clipseg(str(root / "clipseg"), seed=0),
        "grounding_dino": build_tiny_grounding_dino(str(root / "grounding_dino"), seed=0),
        "sam": build_tiny_sam(str(root / "sam"), seed=0),
    }


def teacher_config(name: str, tiny: dict[str, str], **kw) -> TeacherConfig:
    model = tiny["grounding_dino"] if name == "grounded_sam" else tiny[name]
    sam = tiny["sam"] if name == "grounded_sam" else ""
    kw.setdefault("score_threshold", 0.0)
    return TeacherConfig(name=name, model=model, sam_model=sam, device="cpu", **kw)


@pytest.fixture(scope="module")
def teachers(tiny) -> dict:
    names = ["owlv2", "clipseg", "grounding_dino", "grounded_sam"]
    return {n: build_teacher(teacher_config(n, tiny, prompt_template="{part} of a {category}")) for n in names}


# ---------------------------------------------------------------------------- prompts, phrases


def test_build_prompts_fills_template_and_tracks_part_span():
    p = build_prompts(["Nose_Cone", "wing"], "AirPlane", "a photo of the {part} of a {category}")
    assert p.texts == ["a photo of the nose cone of a airplane", "a photo of the wing of a airplane"]
    assert [t[s:e] for t, (s, e) in zip(p.texts, p.part_spans)] == ["nose cone", "wing"]
    plain = build_prompts(["back leg"], "Chair")
    assert plain.texts == ["back leg"] and plain.part_spans == [(0, 8)]
    lead = build_prompts(["seat"], "chair", "  {category}: {part}")
    assert lead.texts == ["chair: seat"] and lead.texts[0][slice(*lead.part_spans[0])] == "seat"
    with pytest.raises(ValueError, match="part"):
        build_prompts(["seat"], "chair", "{category}")


def test_detection_caption_spans_and_dots():
    caption, spans = detection_caption(build_prompts(["nose cone", "st. wing", "tail"], "plane"))
    assert caption == "nose cone. st  wing. tail."
    assert [caption[s:e] for s, e in spans] == ["nose cone", "st  wing", "tail"]


def test_token_parts_with_bert_tokenizer_separates_repeated_words():
    tok = bert_tokenizer()
    prompts = build_prompts(["front leg", "back leg", "seat"], "chair", "{part} of a {category}")
    caption, spans = detection_caption(prompts)
    enc = tok(caption, return_offsets_mapping=True)
    parts = token_parts(enc["offset_mapping"], spans)
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    named = [(t, int(p)) for t, p in zip(tokens, parts)]
    assert [t for t, p in named if p == 0] == ["front", "leg"]
    assert [t for t, p in named if p == 1] == ["back", "leg"]
    assert [t for t, p in named if p == 2] == ["seat"]
    # [CLS], [SEP], dots and the template's words name no part.
    assert {t for t, p in named if p == -1} == {"[CLS]", "[SEP]", ".", "of", "a", "chair"}


def test_token_parts_keeps_wordpieces_with_their_word():
    assert token_parts([(0, 0), (0, 3), (3, 4), (5, 9), (0, 0)], [(0, 4), (5, 9)]).tolist() == [-1, 0, 0, 1, -1]


@pytest.mark.parametrize(
    "phrase, expected",
    [
        ("nose cone", 0),  # exact, multi-word
        ("Nose Cone.", 0),  # case and punctuation
        ("nose co ##ne", 0),  # WordPiece pieces joined
        ("front leg", 2),  # repeated word: the other word decides
        ("back legs", 3),  # plural
        ("front", 2),  # best overlap
        ("cone", 0),
        ("nose cone of a airplane", 0),  # the full prompt
        ("leg", None),  # in every leg part and no other word: ambiguous
        ("front leg back", None),  # spans two parts equally: ambiguous
        ("propeller", None),  # unknown
        ("", None),
        ("...", None),
    ],
)
def test_match_phrase(phrase, expected):
    names = ["nose cone", "wing", "front leg", "back leg"]
    prompts = [f"{n} of a airplane" for n in names]
    assert match_phrase(phrase, names, prompts) == expected


def test_match_phrase_prefers_exact_over_overlap():
    assert match_phrase("leg", ["leg", "leg rest"]) == 0
    assert match_phrase("leg rest", ["leg", "leg rest"]) == 1
    assert match_phrase("rest", ["leg", "leg rest"]) == 1


# ---------------------------------------------------------------------------- boxes, masks, scores


def test_clip_boxes_orders_and_clips():
    out = clip_boxes(np.array([[-5, 10, 30, 70], [40, 50, 20, 10]]), height=64, width=32)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0, 10, 30, 64], [20, 10, 32, 50]])


def test_box_iou_and_classwise_nms():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    iou = box_iou(boxes, boxes)
    assert iou[0, 1] == pytest.approx(90 / 110) and iou[0, 3] == 0 and iou[0, 0] == 1
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    labels = np.array([0, 0, 1, 0])
    # Box 1 overlaps the better box 0 of its own part: dropped; box 2 is another part: kept.
    assert nms(boxes, scores, labels, 0.5).tolist() == [True, False, True, True]
    assert nms(boxes, scores, labels, 1.0).all()


def test_detections_threshold_label_and_size_rules():
    cfg = TeacherConfig(score_threshold=0.5, nms_iou=1.0)
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [5, 5, 5.5, 20], [0, 0, 90, 90]], np.float32)
    pred = detections(boxes, np.array([0.6, 0.9, 0.9, 0.4]), np.array([1, -1, 0, 2]), 64, cfg)
    # −1 label (no part), sub-pixel width, score under threshold: all dropped.
    assert pred.labels.tolist() == [1] and pred.scores.tolist() == pytest.approx([0.6])


def test_whole_object_boxes_are_dropped():
    shape_mask = np.zeros((64, 64), bool)
    shape_mask[10:50, 10:50] = True
    pred = ViewPrediction(
        labels=np.array([0, 1, 2]),
        scores=np.array([0.9, 0.8, 0.7], np.float32),
        boxes=np.array([[8, 8, 52, 52], [10, 10, 30, 50], [10, 10, 50, 49.6]], np.float32),
    )
    kept = finish(pred, shape_mask, TeacherConfig(score_threshold=0.5, whole_object_fraction=0.98))
    # Box 0 holds all the shape, box 2 rounds to all of it; box 1 holds half.
    assert kept.labels.tolist() == [1]
    assert kept.boxes.dtype == np.float32 and kept.labels.dtype == np.int64


def test_part_scores_take_best_token_of_each_part():
    probs = torch.tensor([[[0.1, 0.9, 0.2, 0.3, 0.8, 0.0]]])  # (B=1, Q=1, L=6)
    token_part = np.array([-1, 0, 0, -1, 1])  # T=5 < L; part 2 has no token
    out = part_scores(probs, token_part, 3)
    assert out.shape == (1, 1, 3)
    assert out[0, 0].tolist() == pytest.approx([0.9, 0.8, 0.0])


def test_masks_from_probs_winner_takes_pixel():
    probs = torch.zeros(3, 4, 4)
    probs[0, :, :2] = 0.9
    probs[1, :, 2:] = 0.6
    probs[1, 0, 2:] = 0.3  # below threshold: nobody gets row 0, columns 2-3
    probs[2] = 0.2  # never wins
    shape = torch.ones(4, 4, dtype=torch.bool)
    shape[3] = False
    pred = masks_from_probs(probs, shape, threshold=0.5)
    assert pred.labels.tolist() == [0, 1] and pred.boxes is None
    assert pred.masks.dtype == bool and pred.masks.shape == (2, 4, 4)
    assert pred.masks[0].sum() == 6 and pred.masks[1].sum() == 4
    assert not (pred.masks[0] & pred.masks[1]).any() and not pred.masks[:, 3].any()
    assert pred.scores.tolist() == pytest.approx([0.9, 0.6])
    empty = masks_from_probs(probs, shape, threshold=0.95)
    assert len(empty) == 0 and empty.masks.shape == (0, 4, 4)


def test_view_batches_cover_views():
    assert [list(r) for r in view_batches(5, 2)] == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError, match="batch_size"):
        list(view_batches(5, 0))


def test_clip_tokenizer_puts_special_tokens_last():
    tok = clip_tokenizer()
    ids = tok("nose cone")["input_ids"]
    assert ids[0] == tok.bos_token_id == len(tok) - 2 and ids[-1] == tok.eos_token_id == len(tok) - 1
    assert tok.convert_ids_to_tokens(ids[1:-1]) == ["nose</w>", "cone</w>"]


# ---------------------------------------------------------------------------- loading errors


def test_missing_model_dir_error_names_it(tmp_path):
    missing = str(tmp_path / "no_such_model")
    for name in ["owlv2", "clipseg", "grounding_dino", "grounded_sam"]:
        with pytest.raises(TeacherModelError, match="teacher.model") as e:
            build_teacher(TeacherConfig(name=name, model=missing, sam_model=missing, device="cpu"))
        assert missing in str(e.value) and "no such model directory" in str(e.value)


def test_empty_or_incomplete_sources(tmp_path, tiny):
    with pytest.raises(TeacherModelError, match="teacher.model is empty"):
        build_teacher(TeacherConfig(name="owlv2", model="", device="cpu"))
    with pytest.raises(TeacherModelError, match="teacher.sam_model is empty"):
        build_teacher(TeacherConfig(name="grounded_sam", model=tiny["grounding_dino"], device="cpu"))
    with pytest.raises(TeacherModelError, match="teacher.sam_model"):
        build_teacher(TeacherConfig(name="grounded_sam", model=tiny["grounding_dino"], sam_model=str(tmp_path / "x")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TeacherModelError, match="empty.*cannot load"):
        build_teacher(TeacherConfig(name="clipseg", model=str(tmp_path / "empty"), device="cpu"))
    assert check_model_source("google/owlv2-base-patch16") == "google/owlv2-base-patch16"


def test_unfetchable_hub_id_offline_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TeacherModelError, match="teacher.model='nobody/no-such-model'.*--local-dir"):
        build_teacher(TeacherConfig(name="owlv2", model="nobody/no-such-model", device="cpu"))


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="teacher.device=cuda"):
            resolve_device("cuda")


# ---------------------------------------------------------------------------- the teachers


def check_predictions(preds: list[ViewPrediction], views: RenderedViews, output: str, num_parts: int = 4) -> None:
    assert len(preds) == views.num_views
    h = w = views.image_size
    for v, p in enumerate(preds):
        m = len(p)
        assert p.labels.shape == (m,) and p.labels.dtype == np.int64
        assert p.scores.shape == (m,) and p.scores.dtype == np.float32
        assert ((p.labels >= 0) & (p.labels < num_parts)).all()
        assert ((p.scores >= 0) & (p.scores <= 1)).all()
        if output == "box" or p.boxes is not None:
            assert p.boxes.shape == (m, 4) and p.boxes.dtype == np.float32
            b = p.boxes
            assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
            assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        if output == "mask":
            assert p.masks.shape == (m, h, w) and p.masks.dtype == bool
            assert p.masks.any(axis=(1, 2)).all(), "empty masks are dropped"
            assert not (p.masks & ~views.shape_masks[v]).any(), "masks stay on the shape"


@pytest.mark.parametrize("name", ["owlv2", "clipseg", "grounding_dino", "grounded_sam"])
def test_teacher_contract(name, teachers):
    teacher = teachers[name]
    views = fake_views()
    preds = teacher.predict(views, fake_shape())
    check_predictions(preds, views, teacher.output)
    assert sum(len(p) for p in preds) > 0, "threshold 0 keeps something"
    assert max(float(p.scores.max()) for p in preds if len(p)) > 0, "queries not all masked (BOS id 0?)"


@pytest.mark.parametrize("name", ["owlv2", "clipseg", "grounding_dino", "grounded_sam"])
def test_teacher_thresholds(name, tiny):
    views, shape = fake_views(), fake_shape()
    teacher = build_teacher(teacher_config(name, tiny, score_threshold=0.0))
    scores = np.concatenate([p.scores for p in teacher.predict(views, shape)])
    # The teacher reads its config at predict time, so one load serves every threshold.
    # 1.01 is outside the config's validated range: set after validation; nothing survives.
    teacher.cfg.score_threshold = 1.01
    assert sum(len(p) for p in teacher.predict(views, shape)) == 0
    mid = float(np.median(scores))
    teacher.cfg.score_threshold = mid
    kept = np.concatenate([p.scores for p in teacher.predict(views, shape)])
    assert (kept >= mid).all()
    if name != "clipseg":  # box scores do not depend on the threshold; mask scores do
        assert len(kept) == int((scores >= mid).sum())


@pytest.mark.parametrize("name", ["owlv2", "clipseg", "grounding_dino"])
def test_batch_size_does_not_change_predictions(name, tiny, teachers):
    views, shape = fake_views(), fake_shape()
    whole = teachers[name].predict(views, shape)
    cfg = teacher_config(name, tiny, prompt_template="{part} of a {category}", batch_size=2)
    split = build_teacher(cfg).predict(views, shape)
    for a, b in zip(whole, split):
        assert a.labels.tolist() == b.labels.tolist()
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
        if a.boxes is not None:
            np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)


def test_grounding_dino_phrase_fallback(teachers, monkeypatch):
    """A tokenizer without offsets: labels come from the decoded phrases instead."""
    teacher = teachers["grounding_dino"]
    monkeypatch.setattr(teacher, "_token_parts", lambda caption, spans: None)
    views = fake_views()
    check_predictions(teacher.predict(views, fake_shape()), views, "box")


def test_grounding_dino_whole_object_boxes_dropped(teachers):
    """Every kept box covers < 98% of its view's shape pixels."""
    views = fake_views()
    masks = views.shape_masks
    for v, p in enumerate(teachers["grounding_dino"].predict(views, fake_shape())):
        for x0, y0, x1, y1 in np.round(p.boxes).astype(int):
            assert masks[v, y0:y1, x0:x1].sum() < 0.98 * masks[v].sum()


def test_grounded_sam_keeps_dino_labels(teachers):
    views, shape = fake_views(), fake_shape()
    dino = teachers["grounding_dino"].predict(views, shape)
    sam = teachers["grounded_sam"].predict(views, shape)
    for d, s in zip(dino, sam):
        assert len(s) <= len(d)
        assert set(map(tuple, s.boxes.tolist())) <= set(map(tuple, d.boxes.tolist()))


@pytest.mark.parametrize("name", ["owlv2", "clipseg", "grounding_dino"])
def test_long_part_names_are_truncated_not_fatal(name, teachers):
    long = " ".join(["very"] * 80 + ["long part"])  # > the tiny models' 16 / 64 text tokens
    shape = Shape("s1", "Chair", ["seat", long], np.zeros((4, 3)))
    views = fake_views(2)
    check_predictions(teachers[name].predict(views, shape), views, teachers[name].output, num_parts=2)


def test_grounded_sam_box_chunks_do_not_change_masks(teachers, monkeypatch):
    from distill.teachers import grounded_sam

    views, shape = fake_views(2), fake_shape()
    whole = teachers["grounded_sam"].predict(views, shape)
    monkeypatch.setattr(grounded_sam, "SAM_BOX_CHUNK", 3)
    chunked = teachers["grounded_sam"].predict(views, shape)
    assert sum(len(p) for p in whole) > 3
    for a, b in zip(whole, chunked):
        np.testing.assert_array_equal(a.masks, b.masks)
        assert a.labels.tolist() == b.labels.tolist()
