"""The teacher interface: rendered views + part names → per-view boxes or masks.

Every teacher (real VLMs and the simulated one) returns the same ``ViewPrediction`` per
view; ``filter_predictions`` applies the rules shared by all (docs/design.md §3): keep scores at
or above the threshold, drop boxes that cover the whole projected shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from distill.records import Shape
from distill.views import RenderedViews


@dataclass
class ViewPrediction:
    """One view's predictions (M of them).

    labels: (M,) int64 part indices into the category's part names · scores: (M,) float32
    in [0, 1] · boxes: (M, 4) float32 pixel ``x0, y0, x1, y1`` (x = column), or None ·
    masks: (M, H, W) bool, or None. Box teachers set ``boxes``; mask teachers set ``masks``
    (and may set ``boxes`` too).
    """

    labels: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray | None = None
    masks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, keep: np.ndarray) -> "ViewPrediction":
        return ViewPrediction(
            self.labels[keep],
            self.scores[keep],
            None if self.boxes is None else self.boxes[keep],
            None if self.masks is None else self.masks[keep],
        )

    @classmethod
    def empty(cls, image_size: int, with_masks: bool = False) -> "ViewPrediction":
        return cls(
            np.zeros(0, np.int64),
            np.zeros(0, np.float32),
            np.zeros((0, 4), np.float32),
            np.zeros((0, image_size, image_size), bool) if with_masks else None,
        )


class Teacher(Protocol):
    """What every teacher offers."""

    name: str
    output: str  # "box" | "mask"

    def predict(self, views: RenderedViews, shape: Shape) -> list[ViewPrediction]:
        """One ``ViewPrediction`` per view, already passed through ``filter_predictions``."""
        ...


def box_of_mask(mask: np.ndarray) -> np.ndarray | None:
    """(H, W) bool → tight pixel box ``x0, y0, x1, y1`` (exclusive ends), None when empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def filter_predictions(
    pred: ViewPrediction,
    shape_mask: np.ndarray,
    score_threshold: float = 0.5,
    whole_object_fraction: float = 0.98,
) -> ViewPrediction:
    """Keep ``score >= score_threshold``; drop boxes (and masks) covering ≥
    ``whole_object_fraction`` of the projected shape's pixels (docs/design.md §3: whole-object
    boxes carry no part).

    shape_mask: (H, W) bool pixels covered by the shape in this view.
    """
    keep = pred.scores >= score_threshold
    total = int(shape_mask.sum())
    if pred.boxes is not None and total > 0:
        # Fraction of shape pixels inside each box, via a 2D prefix sum: O(M) after O(HW).
        integral = np.pad(shape_mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        h, w = shape_mask.shape
        b = np.round(pred.boxes).astype(np.int64)
        x0, x1 = np.clip(b[:, 0], 0, w), np.clip(b[:, 2], 0, w)
        y0, y1 = np.clip(b[:, 1], 0, h), np.clip(b[:, 3], 0, h)
        inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
        keep &= inside < whole_object_fraction * total
    if pred.masks is not None and len(pred) and total > 0:
        # A mask over (nearly) every shape pixel is the whole object, not a part.
        on_shape = (pred.masks & shape_mask[None]).reshape(len(pred), -1).sum(1)
        keep &= on_shape < whole_object_fraction * total
    return pred.select(keep)
