"""Data-source names → readers: the one list of ``data.source`` names a reader serves.

A reader is ``read(data: DataConfig, seed: int) -> Iterator[SourceItem]``. This package's
readers (``psb``, ``shapenetpart``, ``files``, ``mix``) are imported on first use, so
``distill.config`` can validate names against ``SOURCES`` without importing any of them.
``procedural`` is made by ``generation``, which registers its reader with
``register_reader`` when imported (distill never imports generation; ``cluster.passes.ingest``
imports ``generation`` for it). Import-light on purpose: no numpy, no ``distill.config``.
"""

from __future__ import annotations

import functools
import importlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distill.config import DataConfig
    from distill.records import Shape


@dataclass(frozen=True)
class SourceItem:
    """One shape of a source, not yet read.

    shape_id: unique in its corpus, known without reading the file · category: canonical
    category name · path: the file (or a description for generated items), for rejects ·
    load: reads and samples the shape; raises ``ShapeError``/``OSError``/``ValueError``.
    """

    shape_id: str
    category: str
    path: str
    load: Callable[[], Shape]


Reader = Callable[["DataConfig", int], Iterator[SourceItem]]
"""``(data, seed) -> items``: the items of one source, in a stable order (category, then id)."""

LOCAL_READERS: dict[str, str] = {
    "psb": "distill.readers.psb",
    "shapenetpart": "distill.readers.shapenetpart",
    "files": "distill.readers.files",
    "mix": "distill.readers.mix",
}
"""Readers of this package: source → the module whose ``read`` serves it."""
PROVIDED_READERS: dict[str, str] = {"procedural": "generation"}
"""Sources whose reader a higher layer registers when imported: source → that package."""
SOURCES: tuple[str, ...] = (*PROVIDED_READERS, *LOCAL_READERS)
"""Every ``data.source`` a reader serves (shape tables, ``generated``/``table``, are not read here)."""
MIX_SOURCES: tuple[str, ...] = tuple(s for s in SOURCES if s != "mix")
"""What a ``data.mix`` entry may read."""

_REGISTERED: dict[str, Reader] = {}


def register_reader(name: str, reader: Reader) -> None:
    """Serve source ``name`` (one of ``PROVIDED_READERS``) with ``reader``."""
    if name not in PROVIDED_READERS:
        raise ValueError(f"register_reader: {name!r} is not a provided source ({', '.join(PROVIDED_READERS)})")
    _REGISTERED[name] = reader


def reader(name: str) -> Reader:
    """The reader of source ``name``; ``ValueError`` for a name no reader serves or one whose
    provider was not imported."""
    if name in LOCAL_READERS:
        return importlib.import_module(LOCAL_READERS[name]).read
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in PROVIDED_READERS:
        owner = PROVIDED_READERS[name]
        raise ValueError(
            f"data.source={name} is served by {owner}, which registers its reader when imported: "
            f"import {owner} before listing items (cluster.passes.ingest does)"
        )
    raise ValueError(
        f"data.source={name!r} has no file reader here (readers: {', '.join(sorted(SOURCES))}); "
        "shape tables (table, generated) are read by the cluster storage layer"
    )


def _with_vocabulary(load: Callable[[], Shape], datasets: tuple[str, ...]) -> Shape:
    from distill.vocab import to_vocabulary

    return to_vocabulary(load(), datasets)


def iter_items(data: DataConfig, seed: int) -> Iterator[SourceItem]:
    """The items of ``data.source``, filtered by ``data.categories``, ``data.split`` and
    ``data.per_category``, in a stable order (category, then id).

    Raises ``ValueError`` (unknown category filter, a source no reader serves) or
    ``FileNotFoundError`` (``data.path`` missing) when listing starts.
    """
    # The first item is read now, so configuration errors surface at the call, not at the
    # first next(); the rest stream (a driver holds no item it has handed on).
    items = reader(data.source)(data, seed)
    first = next(items, None)
    if first is None:
        return iter(())
    items = itertools.chain([first], items)
    if data.vocabulary:
        datasets = tuple(data.vocabulary)
        return (
            SourceItem(i.shape_id, i.category, i.path, functools.partial(_with_vocabulary, i.load, datasets))
            for i in items
        )
    return items
