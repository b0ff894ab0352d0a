"""``data.source=procedural``: the embedded corpus as ``distill.readers`` items.

Registered by ``generation/__init__.py`` (distill never imports generation), so it is the
generation stage's procedural path seen as a data source: the same shapes
(``make_shape`` with the run seed), ids (``shape_id``), splits (``split_indices``) and
quality filters (``generation.filters.check_shape``; a rejected shape fails its load, and
ingest records the reason in ``rejects/``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING

from distill.categories import PROCEDURAL_PARTS
from distill.readers.common import select_categories
from distill.readers.registry import SourceItem
from distill.records import Shape, ShapeError
from generation.procedural import CATEGORIES, DEFAULT_COUNT, make_shape, shape_id, split_indices

if TYPE_CHECKING:
    from distill.config import DataConfig


def checked_shape(category: str, index: int, seed: int, num_points: int) -> Shape:
    """``make_shape``, then the quality filters; ``ShapeError`` with the reason when they reject it."""
    from generation.filters import check_shape  # local: trimesh and scipy load on first use

    shape = make_shape(category, index, seed, num_points)
    reason = check_shape(shape)
    if reason is not None:
        raise ShapeError(f"{shape.shape_id}: {reason}")
    return shape


def read(data: DataConfig, seed: int) -> Iterator[SourceItem]:
    """``data.per_category`` instances (0: ``DEFAULT_COUNT``) of each of ``data.categories``
    (empty: the default corpus ``CATEGORIES``; any procedural category may be asked for)
    from ``data.split``'s index range."""
    count = data.per_category or DEFAULT_COUNT
    wanted = data.categories or list(CATEGORIES)
    for category in select_categories(list(PROCEDURAL_PARTS), wanted, "procedural"):
        for index in split_indices(data.split, count):
            load = functools.partial(checked_shape, category, index, seed, data.num_points)
            yield SourceItem(shape_id(category, index), category, f"procedural:{category}:{index}", load)
