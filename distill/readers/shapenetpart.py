"""``data.source=shapenetpart``: the official v0_normal layout.

``<synset>/<id>.txt`` with lines ``x y z nx ny nz label`` (global part ids; category-local
= global − the category's start). Splits from
``train_test_split/shuffled_{split}_file_list.json``; ``all`` = every file present. Ids
``shapenetpart/<synset>/<id>``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from distill.categories import SHAPENETPART_PARTS, SHAPENETPART_PID_START, SHAPENETPART_SYNSETS, canonical_name
from distill.readers.common import cap, naming, require_dir, select_categories
from distill.readers.registry import SourceItem
from distill.records import Shape, ShapeError
from distill.sampling import derive_seed, shape_from_points

if TYPE_CHECKING:
    from distill.config import DataConfig


def _read_synsets(root: Path) -> dict[str, str]:
    """Category → synset, from ``synsetoffset2category.txt`` when present."""
    listing = root / "synsetoffset2category.txt"
    if not listing.is_file():
        return dict(SHAPENETPART_SYNSETS)
    out = {}
    for line in listing.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            out[parts[0]] = parts[1]
    return out


def _read_pid_starts(root: Path) -> dict[str, int]:
    """Category → first global part id, from ``shapenet_pid_start.json`` when present."""
    path = root / "shapenet_pid_start.json"
    if not path.is_file():
        return dict(SHAPENETPART_PID_START)
    raw = json.loads(path.read_text())
    return {canonical_name(k, list(SHAPENETPART_PARTS)): int(v) for k, v in raw.items()}


def load_shapenetpart_file(path: str, shape_id: str, category: str, start: int, num_points: int, seed: int) -> Shape:
    """One v0_normal ``.txt`` (lines ``x y z nx ny nz label``, global label ids) → a Shape."""
    part_names = SHAPENETPART_PARTS[category]
    try:
        data = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise ShapeError(f"{path}: not a table of numbers ({e})") from None
    if data.size == 0:
        raise ShapeError(f"{path}: empty file")
    if data.shape[1] != 7:
        raise ShapeError(f"{path}: expected 7 columns (x y z nx ny nz label), found {data.shape[1]}")
    labels = data[:, 6]
    if not np.all(labels == np.round(labels)):
        raise ShapeError(f"{path}: part labels must be integers")
    local = labels.astype(np.int64) - start
    if local.min() < 0 or local.max() >= len(part_names):
        raise ShapeError(
            f"{path}: global part ids {int(labels.min())}..{int(labels.max())} outside {category}'s "
            f"{start}..{start + len(part_names) - 1}"
        )
    meta = {"file": path}
    with naming(path):
        return shape_from_points(
            shape_id, category, part_names, data[:, :3], data[:, 3:6], local, num_points, seed, "shapenetpart", meta
        )


def read(data: DataConfig, seed: int) -> Iterator[SourceItem]:
    root = require_dir(data.path, "shapenetpart")
    synsets = _read_synsets(root)
    starts = _read_pid_starts(root)
    by_synset = {v: canonical_name(k, list(SHAPENETPART_PARTS)) for k, v in synsets.items()}
    # Every official category may be asked for; one without a folder here yields nothing.
    categories = select_categories(
        [canonical_name(c, list(SHAPENETPART_PARTS)) for c in synsets], data.categories, "shapenetpart"
    )
    listed: dict[str, set[str]] | None = None
    if data.split != "all":
        split_file = root / "train_test_split" / f"shuffled_{data.split}_file_list.json"
        if not split_file.is_file():
            raise FileNotFoundError(f"{split_file}: the official split list is missing (data.split={data.split})")
        listed = {}
        for entry in json.loads(split_file.read_text()):
            # Entries read "shape_data/<synset>/<id>".
            parts = entry.strip("/").split("/")
            if len(parts) >= 2 and parts[-2] in by_synset:
                listed.setdefault(parts[-2], set()).add(parts[-1])
    for category in categories:
        synset = SHAPENETPART_SYNSETS.get(category, synsets.get(category, ""))
        folder = root / synset
        if not folder.is_dir():
            continue
        ids = sorted(p.stem for p in folder.glob("*.txt"))
        if listed is not None:
            # The split lists name every official shape; keep those whose file is here.
            ids = [i for i in ids if i in listed.get(synset, set())]
        for item_id in cap(ids, data.per_category):
            shape_id = f"shapenetpart/{synset}/{item_id}"
            path = str(folder / f"{item_id}.txt")
            load = functools.partial(
                load_shapenetpart_file,
                path,
                shape_id,
                category,
                starts[category],
                data.num_points,
                derive_seed(seed, shape_id),
            )
            yield SourceItem(shape_id, category, path, load)
