"""The label space of a student: its logit slots, and the masking of other categories' slots.

One category: slot = part label. Several categories in one student: the union of their
part lists back to back (category c owns slots ``offsets[c]:offsets[c+1]``), and every
point's logits are masked to its category's slots, so the loss and the argmax only ever
see that category's parts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from distill.records import Shape

# Logit of a slot outside the point's category: exp(−1e4) underflows to exactly 0 in the
# softmax, while staying finite (−inf would give NaN gradients in some reductions).
MASKED_LOGIT = -1.0e4


@dataclass(frozen=True)
class LabelSpace:
    """The logit slots of one student: the part lists of its categories, back to back."""

    categories: tuple[str, ...]
    part_names: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        if not self.categories or len(self.categories) != len(self.part_names):
            raise ValueError(f"LabelSpace needs one part list per category, got {self.categories}")
        if len(set(self.categories)) != len(self.categories):
            raise ValueError(f"LabelSpace categories repeat: {self.categories}")
        for c, parts in zip(self.categories, self.part_names):
            if not parts:
                raise ValueError(f"category {c!r} has no parts")

    @classmethod
    def from_shapes(cls, shapes: Iterable[Shape]) -> LabelSpace:
        """Categories in sorted order, each with its part names; shapes must agree on them."""
        parts: dict[str, tuple[str, ...]] = {}
        for s in shapes:
            names = tuple(s.part_names)
            if parts.setdefault(s.category, names) != names:
                raise ValueError(
                    f"shape {s.shape_id}: part names {list(names)} differ from other {s.category!r} "
                    f"shapes' {list(parts[s.category])}"
                )
        cats = tuple(sorted(parts))
        return cls(cats, tuple(parts[c] for c in cats))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelSpace:
        return cls(tuple(d["categories"]), tuple(tuple(p) for p in d["part_names"]))

    def to_dict(self) -> dict[str, Any]:
        return {"categories": list(self.categories), "part_names": [list(p) for p in self.part_names]}

    @property
    def offsets(self) -> np.ndarray:
        """(C + 1,) int64: category c owns slots offsets[c]:offsets[c+1]."""
        return np.concatenate([[0], np.cumsum([len(p) for p in self.part_names])]).astype(np.int64)

    @property
    def num_slots(self) -> int:
        return int(self.offsets[-1])

    @property
    def num_categories(self) -> int:
        return len(self.categories)

    def category_index(self, category: str, part_names: Sequence[str] | None = None) -> int:
        if category not in self.categories:
            raise ValueError(f"category {category!r} is not in this student's {list(self.categories)}")
        c = self.categories.index(category)
        if part_names is not None and tuple(part_names) != self.part_names[c]:
            raise ValueError(f"{category!r}: part names {list(part_names)} != the student's {list(self.part_names[c])}")
        return c

    def slot_group(self) -> Tensor:
        """(S,) int64: the category of each slot (per-category class weights)."""
        return torch.repeat_interleave(
            torch.arange(self.num_categories), torch.tensor([len(p) for p in self.part_names])
        )

    def allowed(self) -> Tensor:
        """(C, S) bool: which slots each category may predict."""
        off = self.offsets
        mask = torch.zeros(self.num_categories, self.num_slots, dtype=torch.bool)
        for c in range(self.num_categories):
            mask[c, off[c] : off[c + 1]] = True
        return mask


def mask_logits(logits: Tensor, category: Tensor, space: LabelSpace) -> Tensor:
    """Logits (B, N, S) with every slot outside element b's category set to ``MASKED_LOGIT``."""
    if space.num_categories == 1:
        return logits
    allowed = space.allowed().to(logits.device)[category.to(logits.device)]  # (B, S)
    return logits.masked_fill(~allowed.unsqueeze(1), MASKED_LOGIT)


def group_for_students(shapes: Sequence[Shape], per_category: bool) -> list[list[Shape]]:
    """The shapes each student trains on: one group per category, or one group of all."""
    if not per_category:
        return [list(shapes)]
    groups: dict[str, list[Shape]] = {}
    for s in shapes:
        groups.setdefault(s.category, []).append(s)
    return [groups[c] for c in sorted(groups)]
