"""Part-segmentation metrics (docs/design.md §3).

Per shape: IoU of every part of its category; a part absent from both prediction and
truth scores 1; the shape's mIoU is their mean ×100. Points labelled −1 in the truth are
excluded. A category's score is the mean over its shapes; we report the mean over
categories and the mean over all shapes.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np


def part_ious(pred: np.ndarray, truth: np.ndarray, num_parts: int) -> np.ndarray:
    """IoU of each part of one shape.

    pred, truth: (N,) int part indices (truth −1 = unlabelled, excluded; pred −1 = no
    prediction, counts as wrong) → (num_parts,) float64 in [0, 1].
    """
    pred = np.asarray(pred)
    truth = np.asarray(truth)
    if pred.shape != truth.shape or pred.ndim != 1:
        raise ValueError(f"pred {pred.shape} and truth {truth.shape} must be equal (N,) arrays")
    if num_parts < 1:
        raise ValueError(f"num_parts={num_parts} must be >= 1")
    keep = truth >= 0
    p, t = pred[keep], truth[keep]
    ious = np.ones(num_parts, np.float64)
    for c in range(num_parts):
        inter = np.count_nonzero((p == c) & (t == c))
        union = np.count_nonzero((p == c) | (t == c))
        if union:
            ious[c] = inter / union
    return ious


def shape_miou(pred: np.ndarray, truth: np.ndarray, num_parts: int) -> float:
    """mIoU ×100 of one shape (see ``part_ious``)."""
    return float(part_ious(pred, truth, num_parts).mean() * 100.0)


@dataclass
class MIoUTable:
    """Accumulates per-shape mIoU and reports per category, over categories, over shapes."""

    per_shape: dict[str, tuple[str, float]] = field(default_factory=dict)

    def add(self, shape_id: str, category: str, pred: np.ndarray, truth: np.ndarray, num_parts: int) -> float:
        score = shape_miou(pred, truth, num_parts)
        self.per_shape[shape_id] = (category, score)
        return score

    def per_category(self) -> dict[str, float]:
        groups: dict[str, list[float]] = defaultdict(list)
        for category, score in self.per_shape.values():
            groups[category].append(score)
        return {c: float(np.mean(v)) for c, v in sorted(groups.items())}

    def category_mean(self) -> float:
        cats = self.per_category()
        return float(np.mean(list(cats.values()))) if cats else float("nan")

    def shape_mean(self) -> float:
        scores = [s for _, s in self.per_shape.values()]
        return float(np.mean(scores)) if scores else float("nan")

    def __len__(self) -> int:
        return len(self.per_shape)

    def summary(self) -> dict[str, object]:
        return {
            "category_miou": round(self.category_mean(), 2),
            "shape_miou": round(self.shape_mean(), 2),
            "per_category": {c: round(v, 2) for c, v in self.per_category().items()},
            "num_shapes": len(self.per_shape),
        }


@dataclass
class MIoUSums:
    """Per-category sums of shape mIoU: what a worker returns instead of predictions.

    Mergeable across parts and processes; gives the same per-category, over-categories
    and over-shapes means as ``MIoUTable`` (a category's score is the mean of its shapes').
    """

    sums: dict[str, list[float]] = field(default_factory=dict)
    """category → [sum of shape mIoU, number of shapes]"""

    def add_score(self, category: str, score: float) -> None:
        entry = self.sums.setdefault(category, [0.0, 0.0])
        entry[0] += float(score)
        entry[1] += 1.0

    def add(self, shape_id: str, category: str, pred: np.ndarray, truth: np.ndarray, num_parts: int) -> float:
        score = shape_miou(pred, truth, num_parts)
        self.add_score(category, score)
        return score

    def merge(self, other: MIoUSums) -> MIoUSums:
        for c, (s, n) in other.sums.items():
            entry = self.sums.setdefault(c, [0.0, 0.0])
            entry[0] += s
            entry[1] += n
        return self

    def __len__(self) -> int:
        return int(sum(n for _, n in self.sums.values()))

    def per_category(self) -> dict[str, float]:
        return {c: s / n for c, (s, n) in sorted(self.sums.items()) if n}

    def category_mean(self) -> float:
        cats = self.per_category()
        return float(np.mean(list(cats.values()))) if cats else float("nan")

    def shape_mean(self) -> float:
        n = len(self)
        return float(sum(s for s, _ in self.sums.values()) / n) if n else float("nan")

    def summary(self) -> dict[str, object]:
        return {
            "category_miou": round(self.category_mean(), 2),
            "shape_miou": round(self.shape_mean(), 2),
            "per_category": {c: round(v, 2) for c, v in self.per_category().items()},
            "num_shapes": len(self),
        }


def category_mean_interval(
    values: dict[str, np.ndarray], level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """A bootstrap interval of the mean over categories of per-shape ``values`` (category →
    (n_c,) array, e.g. a student's lead over a baseline per scored shape): shapes are
    resampled with replacement *within* each category, so every resample keeps the
    category counts and the metric's equal weight per category. → (low, high) percentiles."""
    if not values or any(len(v) == 0 for v in values.values()):
        raise ValueError("category_mean_interval needs at least one shape in every category")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level} must be in (0, 1)")
    rng = np.random.default_rng(seed)
    means = np.zeros(resamples)
    for v in values.values():
        v = np.asarray(v, np.float64)
        means += v[rng.integers(0, len(v), size=(resamples, len(v)))].mean(axis=1)
    means /= len(values)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)
