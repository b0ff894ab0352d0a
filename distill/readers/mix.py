"""``data.source=mix``: several sources (``data.mix``), interleaved in the ratio of their counts.

Each entry has its own count per category; ids keep each source's prefix, so they never
collide (a repeated id raises ``ValueError``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

from distill.readers.registry import SourceItem, reader

if TYPE_CHECKING:
    from distill.config import DataConfig, MixEntry


def entry_config(data: DataConfig, entry: MixEntry) -> DataConfig:
    """The ``DataConfig`` of one ``data.mix`` entry: its own fields, ``data``'s where empty."""
    return replace(
        data,
        source=entry.source,
        path=entry.path,
        categories=list(entry.categories or data.categories),
        split=entry.split or data.split,
        per_category=entry.per_category,
        mix=[],
    )


def interleave(groups: list[list[SourceItem]]) -> list[SourceItem]:
    """Items of several sources merged in the ratio of their counts.

    Item i of a group of n sits at (i + 0.5) / n; ties keep the groups' order. Any prefix
    of the result (a bounded part of a streamed table) keeps the stated ratio to within
    one item per source.
    """
    keyed = [((i + 0.5) / len(g), k, i, item) for k, g in enumerate(groups) for i, item in enumerate(g)]
    return [item for *_, item in sorted(keyed, key=lambda t: t[:3])]


def read(data: DataConfig, seed: int) -> Iterator[SourceItem]:
    groups = []
    for k, entry in enumerate(data.mix):
        try:
            groups.append(list(reader(entry.source)(entry_config(data, entry), seed)))
        except (ValueError, FileNotFoundError) as e:
            raise type(e)(f"data.mix[{k}] ({entry.source}): {e}") from None
    seen: dict[str, int] = {}
    for k, group in enumerate(groups):
        for item in group:
            if item.shape_id in seen:
                raise ValueError(
                    f"data.mix[{k}] repeats shape id {item.shape_id!r} of data.mix[{seen[item.shape_id]}]: "
                    "give the two entries disjoint categories or splits"
                )
            seen[item.shape_id] = k
    yield from interleave(groups)
