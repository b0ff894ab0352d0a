"""Listing helpers shared by the readers: splits, category filters, caps, error naming."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from distill.categories import canonical_name
from distill.errors import NotFoundError, UnknownNameError
from distill.records import ShapeError

T = TypeVar("T")


def id_key(item_id: str) -> tuple[int, int, str]:
    """Sort key: numeric ids by value first, then the others by text."""
    return (0, int(item_id), "") if item_id.isdigit() else (1, 0, item_id)


def split_ids(ids: list[str], split: str) -> list[str]:
    """``ids`` (already sorted) → the ones in ``split`` (train = first half, test = rest)."""
    half = (len(ids) + 1) // 2
    if split == "all":
        return ids
    if split == "train":
        return ids[:half]
    if split == "test":
        return ids[half:]
    return []  # val: these sources have no validation split


def split_range(count: int, split: str) -> range:
    """``split_ids`` by position: the indices of ``split`` among ``count`` sorted ids."""
    half = (count + 1) // 2
    return {"all": range(count), "train": range(half), "test": range(half, count)}.get(split, range(0))


def select_categories(available: list[str], wanted: list[str], source: str) -> list[str]:
    """``data.categories`` matched case-insensitively against what the source has."""
    if not wanted:
        return sorted(available)
    out = []
    for name in wanted:
        try:
            out.append(canonical_name(name, available, f"{source} category"))
        except ValueError as e:
            raise UnknownNameError(f"data.categories: {e}") from None
    return list(dict.fromkeys(out))


def cap(items: Sequence[T], per_category: int) -> Sequence[T]:
    """The first ``per_category`` of ``items`` (0: all)."""
    return items[:per_category] if per_category > 0 else items


def require_dir(path: str, source: str) -> Path:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise NotFoundError(
            f"data.path={path!r} is not a folder (data.source={source}) — point data.path at the dataset's folder"
        )
    return root


@contextlib.contextmanager
def naming(path: str) -> Iterator[None]:
    """Prefix ``path`` to a ShapeError that does not name it yet (the rejects table shows it)."""
    try:
        yield
    except ShapeError as e:
        if path in str(e):
            raise
        raise ShapeError(f"{path}: {e}") from None
