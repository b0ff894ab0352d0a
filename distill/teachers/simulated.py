"""A simulated 2D teacher for benchmarking — **not** a vision-language model.

No VLM weights can be downloaded here, so quality is measured with a teacher that reads
the ground-truth part under every pixel (``RenderedViews.pixel_labels``) and corrupts it
with errors modelled on those detectors make (docs/design.md §4). It has the interface and
outputs of every teacher (``ViewPrediction`` per view, through ``filter_predictions``)
and must never be reported as a VLM.

Presets
    ``clean``: one tight box (or exact mask) per part visible with at least 0.5 % of the
    view's shape pixels, score 1.0: the best any box/mask teacher could do.
    ``glip_like``: per view and per visible part (same 0.5 % rule) the errors of
    ``GlipLikeErrors`` (numbers from docs/design.md §4).

View correlation (``teacher.view_correlation`` = ρ in [0, 1]). A VLM looks at the same
part in every render of a shape, so when it misses a thin part or calls an armrest a leg
it tends to do so in most views (docs/design.md §4). Per (shape, part) the teacher draws
one *shared* outcome: the uniforms that decide a miss and a confusion, the other part of a
random confusion, the box's side moves (so whether it grows or shrinks, and onto which
side it bleeds) and a mask's dilation. In each view where the part is visible a coin
decides, with probability ρ, that the view uses the shared outcome instead of its own
fresh draws. Each error's probability per view is unchanged (a mixture of two uniforms
is uniform), so the vote moves only through the correlation: ρ = 0 is independent views
(the outputs are those of the teacher before the knob existed), ρ = 1 the same outcome in
every view where the part is visible. Scores, false positives and whole-object boxes stay
per view.

Reproducibility: every draw of a shape comes from ``default_rng([seed, crc32(shape_id)])``
and in a fixed order, so a shape's predictions depend only on (seed, shape id, views);
the shared outcomes and the coins come from two child streams of the same key (``[...,
1]`` and ``[..., 2]``), so the per-view draws are the same whatever ρ. Box and mask
outputs consume the same draws, so they share misses and confusions. The systematic
confuser of each (category, part) comes from ``default_rng([seed, crc32(category)])``
alone, hence is the same for every shape of the category.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from distill.config import TeacherConfig
from distill.records import Shape
from distill.teachers.base import ViewPrediction, box_of_mask, filter_predictions
from distill.views import RenderedViews


@dataclass(frozen=True)
class GlipLikeErrors:
    """The ``glip_like`` error model (docs/design.md §4); probabilities are per view and part."""

    min_part_fraction: float = 0.005
    """A part is considered when it covers ≥ this fraction of the view's shape pixels."""
    miss: float = 0.25
    miss_small_extra: float = 0.25
    """Added to ``miss`` when the part covers < ``small_fraction`` of the shape's pixels."""
    small_fraction: float = 0.05
    box_jitter: float = 0.15
    """Each box side moves by uniform ±this × the box's size along that axis."""
    mask_px: int = 3
    """Masks are dilated (or eroded) by a uniform 0..this pixels."""
    random_confusion: float = 0.10
    """Label replaced by a uniform other part."""
    systematic_confusion: float = 0.15
    """Label replaced by the (category, part)'s fixed confuser."""
    false_positive: float = 0.2
    """Per view: one extra box of a random part ..."""
    false_positive_area: tuple[float, float] = (0.10, 0.40)
    """... covering this fraction of the shape's box."""
    whole_object: float = 0.1
    """Per view: one box around most of the shape with a random part label ..."""
    whole_object_cover: tuple[float, float] = (0.85, 0.97)
    """... covering this fraction of the shape's pixels (uniform), so that it survives the
    98 % whole-object filter as a VLM's near-whole-object box does: the tight shape box
    shrunk about its centre until it covers that fraction."""
    score_correct: tuple[float, float] = (0.5, 0.95)
    score_wrong: tuple[float, float] = (0.5, 0.8)


GLIP_LIKE = GlipLikeErrors()


@dataclass(frozen=True)
class PartDraws:
    """The uniforms that decide one part's errors in one view (``_noisy_view``); arrays
    over parts when they are a shape's shared outcomes."""

    miss: np.ndarray
    confusion: np.ndarray
    other: np.ndarray
    """Index among the part's other parts, for a random confusion."""
    jitter: np.ndarray
    """(…, 4) side moves in units of ``box_jitter`` × the box's size, in [−1, 1]."""
    dilation: np.ndarray
    """Mask dilation (> 0) or erosion (< 0) in pixels."""

    def at(self, p: int) -> PartDraws:
        return PartDraws(self.miss[p], self.confusion[p], self.other[p], self.jitter[p], self.dilation[p])


def shared_draws(rng: np.random.Generator, num_parts: int, errors: GlipLikeErrors) -> PartDraws:
    """One shared outcome per part of a shape (module docstring, view correlation)."""
    return PartDraws(
        miss=rng.random(num_parts),
        confusion=rng.random(num_parts),
        other=rng.integers(0, max(num_parts - 1, 1), size=num_parts),
        jitter=rng.uniform(-1.0, 1.0, size=(num_parts, 4)),
        dilation=rng.integers(-errors.mask_px, errors.mask_px + 1, size=num_parts),
    )


def _crc(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def confusers(seed: int, category: str, num_parts: int) -> np.ndarray:
    """The fixed confuser of each part of ``category``: (P,) int64, never the part itself
    (−1 when the category has a single part)."""
    if num_parts < 1:
        raise ValueError(f"num_parts={num_parts} must be >= 1")
    if num_parts == 1:
        return np.full(1, -1, np.int64)
    rng = np.random.default_rng([seed, _crc(category)])
    other = rng.integers(0, num_parts - 1, size=num_parts)
    return other + (other >= np.arange(num_parts))  # skip the part itself


def _morph(mask: np.ndarray, k: int) -> np.ndarray:
    """Dilate (k > 0) or erode (k < 0) a mask by |k| pixels, working on its bounding window."""
    if k == 0:
        return mask
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    pad = abs(k) + 1
    y0, y1 = max(ys.min() - pad, 0), min(ys.max() + pad + 1, h)
    x0, x1 = max(xs.min() - pad, 0), min(xs.max() + pad + 1, w)
    out = np.zeros_like(mask)
    op = ndimage.binary_dilation if k > 0 else ndimage.binary_erosion
    # Outside the window counts as empty; the pad keeps that away from the mask except at
    # the image border, where erosion eats from the edge as a detector's mask would.
    out[y0:y1, x0:x1] = op(mask[y0:y1, x0:x1], iterations=abs(k))
    return out


def box_mask(box: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool of the pixels whose centres lie in ``box`` (x0, y0, x1, y1)."""
    h, w = shape
    xs = np.arange(w) + 0.5
    ys = np.arange(h) + 0.5
    return ((ys >= box[1]) & (ys < box[3]))[:, None] & ((xs >= box[0]) & (xs < box[2]))[None, :]


def shrink_box_to_cover(box: np.ndarray, shape_mask: np.ndarray, cover: float) -> np.ndarray:
    """The box (x0, y0, x1, y1) shrunk about its centre, by the same fraction of its width
    and height, until the shape pixels whose centres lie inside are at most ``cover`` of
    ``shape_mask``'s pixels (the largest such shrink on a 1/256 grid, found by bisection:
    the covered count only falls as the box shrinks).

    box: (4,) float · shape_mask: (H, W) bool · cover in (0, 1] → (4,) float32.
    """
    if not 0.0 < cover <= 1.0:
        raise ValueError(f"cover={cover} must be in (0, 1]")
    total = int(shape_mask.sum())
    box = np.asarray(box, np.float64)
    centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2] * 2)

    def shrunk(t: float) -> np.ndarray:  # t = 0: the box; t = 1: its centre
        return centre + (box - centre) * (1.0 - t)

    def covered(t: float) -> int:
        return int((shape_mask & box_mask(shrunk(t), shape_mask.shape)).sum())

    if total == 0 or covered(0.0) <= cover * total:
        return box.astype(np.float32)
    lo, hi = 0.0, 1.0  # covered(lo) > cover · total >= covered(hi)
    for _ in range(8):
        mid = (lo + hi) / 2
        if covered(mid) > cover * total:
            lo = mid
        else:
            hi = mid
    return shrunk(hi).astype(np.float32)


class SimulatedTeacher:
    """Noisy box/mask predictions derived from ground-truth pixel labels (a benchmark
    teacher, never a VLM). ``cfg.preset``: clean | glip_like; ``cfg.output``: box | mask."""

    name = "simulated"

    def __init__(self, cfg: TeacherConfig, seed: int = 0, errors: GlipLikeErrors = GLIP_LIKE) -> None:
        if cfg.preset not in ("clean", "glip_like"):
            raise ValueError(f"teacher.preset={cfg.preset!r} is not one of clean, glip_like")
        if cfg.output not in ("box", "mask"):
            raise ValueError(f"teacher.output={cfg.output!r} is not one of box, mask")
        self.cfg = cfg
        self.seed = int(seed)
        self.output = cfg.output
        self.errors = errors
        self.correlation = float(cfg.view_correlation)
        self._confusers: dict[tuple[str, int], np.ndarray] = {}

    def confusers(self, category: str, num_parts: int) -> np.ndarray:
        key = (category, num_parts)
        if key not in self._confusers:
            self._confusers[key] = confusers(self.seed, category, num_parts)
        return self._confusers[key]

    def predict(self, views: RenderedViews, shape: Shape) -> list[ViewPrediction]:
        """One filtered ``ViewPrediction`` per view of ``views`` (labels index ``shape.part_names``)."""
        if shape.num_parts < 1:
            raise ValueError(f"shape {shape.shape_id}: no part names")
        key = [self.seed, _crc(shape.shape_id)]
        rng = np.random.default_rng(key)
        conf = self.confusers(shape.category, shape.num_parts)
        shared = shared_draws(np.random.default_rng([*key, 1]), shape.num_parts, self.errors)
        coins = np.random.default_rng([*key, 2]).random((views.num_views, shape.num_parts))
        out = []
        for v in range(views.num_views):
            shape_mask = views.shape_masks[v]
            if self.cfg.preset == "clean":
                labels, scores, masks = self._clean_view(views.pixel_labels[v], shape_mask, shape.num_parts)
            else:
                use_shared = coins[v] < self.correlation
                labels, scores, masks = self._noisy_view(
                    views.pixel_labels[v], shape_mask, shape.num_parts, conf, rng, shared, use_shared
                )
            out.append(self._finish(labels, scores, masks, shape_mask))
        return out

    # -- per view ---------------------------------------------------------------------
    # Each returns labels, scores and a list of "regions": (H, W) bool masks, or (4,)
    # float boxes in box mode.

    def _visible_parts(self, pixel_labels: np.ndarray, total: int, num_parts: int) -> tuple[np.ndarray, np.ndarray]:
        """Parts with ≥ ``min_part_fraction`` of the shape pixels, and every part's fraction."""
        seen = pixel_labels[pixel_labels >= 0]
        frac = np.bincount(seen, minlength=num_parts)[:num_parts] / max(total, 1)
        return np.nonzero(frac >= self.errors.min_part_fraction)[0], frac

    def _clean_view(self, pixel_labels: np.ndarray, shape_mask: np.ndarray, num_parts: int):
        total = int(shape_mask.sum())
        parts, _ = self._visible_parts(pixel_labels, total, num_parts)
        regions: list[np.ndarray] = []
        for p in parts:
            part_mask = pixel_labels == p
            regions.append(part_mask if self.output == "mask" else box_of_mask(part_mask))
        return list(parts), [1.0] * len(parts), regions

    def _noisy_view(
        self,
        pixel_labels: np.ndarray,
        shape_mask: np.ndarray,
        num_parts: int,
        conf: np.ndarray,
        rng: np.random.Generator,
        shared: PartDraws | None = None,
        use_shared: np.ndarray | None = None,
    ):
        """One view's labels, scores and regions. ``shared``: the shape's shared outcome per
        part, which part p uses instead of this view's draws where ``use_shared[p]``."""
        e = self.errors
        h, w = shape_mask.shape
        total = int(shape_mask.sum())
        parts, frac = self._visible_parts(pixel_labels, total, num_parts)
        labels: list[int] = []
        scores: list[float] = []
        regions: list[np.ndarray] = []
        for p in parts:
            # Fixed number and order of draws per part, whatever the outcome.
            u_miss, u_conf = rng.random(2)
            other = int(rng.integers(0, max(num_parts - 1, 1)))
            u_score = rng.random()
            jitter = rng.uniform(-e.box_jitter, e.box_jitter, size=4)
            k = int(rng.integers(-e.mask_px, e.mask_px + 1))
            if shared is not None and use_shared is not None and use_shared[p]:
                d = shared.at(int(p))
                u_miss, u_conf, other = float(d.miss), float(d.confusion), int(d.other)
                jitter, k = d.jitter * e.box_jitter, int(d.dilation)
            p_miss = e.miss + (e.miss_small_extra if frac[p] < e.small_fraction else 0.0)
            if u_miss < p_miss:
                continue
            label = int(p)
            if num_parts > 1 and u_conf < e.random_confusion:
                label = other + (other >= p)
            elif num_parts > 1 and u_conf < e.random_confusion + e.systematic_confusion:
                label = int(conf[p])
            lo, hi = e.score_correct if label == p else e.score_wrong
            part_mask = pixel_labels == p
            if self.output == "mask":
                region = _morph(part_mask, k)
                if not region.any():
                    continue
            else:
                box = box_of_mask(part_mask)
                size = np.array([box[2] - box[0], box[3] - box[1]] * 2, np.float64)
                region = np.clip(box + jitter * size, 0, [w, h, w, h]).astype(np.float32)
                if region[2] <= region[0] or region[3] <= region[1]:
                    continue
            labels.append(label)
            scores.append(lo + (hi - lo) * u_score)
            regions.append(region)
        shape_box = box_of_mask(shape_mask)
        u_fp, u_whole = rng.random(2)
        fp_label, whole_label = (int(x) for x in rng.integers(0, num_parts, size=2))
        area, aspect, px, py, s_fp, s_whole = rng.random(6)
        if shape_box is None:
            return labels, scores, regions
        lo, hi = e.score_wrong
        if u_fp < e.false_positive:
            a = e.false_positive_area[0] + (e.false_positive_area[1] - e.false_positive_area[0]) * area
            # Width fraction around √a (aspect within e^±0.5), height fraction makes area a.
            wf = float(np.clip(np.sqrt(a) * np.exp(aspect - 0.5), a, 1.0))
            hf = a / wf
            sw, sh = shape_box[2] - shape_box[0], shape_box[3] - shape_box[1]
            x0 = shape_box[0] + px * sw * (1 - wf)
            y0 = shape_box[1] + py * sh * (1 - hf)
            box = np.array([x0, y0, x0 + wf * sw, y0 + hf * sh], np.float32)
            region = (shape_mask & box_mask(box, (h, w))) if self.output == "mask" else box
            if region.any():
                labels.append(fp_label)
                scores.append(lo + (hi - lo) * s_fp)
                regions.append(region)
        if u_whole < e.whole_object:
            # The cover fraction from a child stream of this view's draws, so the other
            # rows' draws stay what they were before the box had a cover fraction.
            u_cover = np.random.default_rng(int(s_whole * 2**32)).random()
            cover = e.whole_object_cover[0] + (e.whole_object_cover[1] - e.whole_object_cover[0]) * u_cover
            box = shrink_box_to_cover(shape_box, shape_mask, cover)
            labels.append(whole_label)
            scores.append(lo + (hi - lo) * s_whole)
            regions.append((shape_mask & box_mask(box, (h, w))) if self.output == "mask" else box)
        return labels, scores, regions

    def _finish(self, labels: list, scores: list, regions: list, shape_mask: np.ndarray) -> ViewPrediction:
        s = shape_mask.shape[0]
        lab = np.asarray(labels, np.int64)
        sc = np.asarray(scores, np.float32)
        if self.output == "mask":
            masks = np.stack(regions) if regions else np.zeros((0, s, s), bool)
            pred = ViewPrediction(lab, sc, None, masks)
            total = int(shape_mask.sum())
            if total and len(pred):
                # filter_predictions tests boxes only; the whole-object rule for masks is
                # the same fraction of the shape's pixels under the mask.
                under = (masks & shape_mask).reshape(len(pred), -1).sum(1)
                pred = pred.select(under < self.cfg.whole_object_fraction * total)
        else:
            boxes = np.stack(regions).astype(np.float32) if regions else np.zeros((0, 4), np.float32)
            pred = ViewPrediction(lab, sc, boxes, None)
        return filter_predictions(pred, shape_mask, self.cfg.score_threshold, self.cfg.whole_object_fraction)
