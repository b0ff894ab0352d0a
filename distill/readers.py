"""Data sources → ``SourceItem``s: a shape id known before loading, and a loader.

The ingest stage lists items cheaply, skips the ids it already holds, and calls
``item.load()`` for the rest; a failing load (``ShapeError``, ``OSError``, ``ValueError``
naming the file) rejects that item only. Listing itself fails only for configuration
errors (a missing dataset folder, an unknown category in ``data.categories``).

Sources (``data.source``):

- ``shapenetpart``: the official v0_normal layout, ``<synset>/<id>.txt`` with lines
  ``x y z nx ny nz label`` (global part ids; category-local = global − the category's
  start). Splits from ``train_test_split/shuffled_{split}_file_list.json``; ``all`` =
  every file present. Ids ``shapenetpart/<synset>/<id>``.
- ``psb``: Labeled PSB, ``<Category>/<id>.off`` + ``<id>_labels.txt``. Ids
  ``psb/<Category>/<id>``.
- ``files``: every mesh or point cloud trimesh reads under ``data.path``, unlabelled. Ids
  ``files/<path relative to data.path, without extension>``.
- ``procedural``: ``generation.procedural`` (imported lazily). Ids
  ``procedural/<Category>/<index:05d>``.
- ``mix``: several of the above (``data.mix``), each with its own count per category, the
  items interleaved in the ratio of the counts; ids keep each source's prefix, so they
  never collide (a repeated id raises ``ValueError``).

``data.vocabulary`` (a list of datasets) moves every loaded shape onto the part
vocabulary those datasets share (``distill.vocab.to_vocabulary``).

Splits other than ShapeNetPart's: ids sorted (numerically when numeric) within each
category, ``train`` = first half, ``test`` = the rest, ``val`` = none. ``per_category``
then keeps the first N of each category.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from distill.categories import (
    PROCEDURAL_PARTS,
    PROCEDURAL_SNP_CATEGORIES,
    PSB_PARTS,
    SHAPENETPART_PARTS,
    SHAPENETPART_PID_START,
    SHAPENETPART_SYNSETS,
    canonical_name,
    part_names_for,
)
from distill.config import DataConfig, MixEntry
from distill.records import Mesh, Shape, ShapeError
from distill.sampling import derive_seed, shape_from_mesh, shape_from_points

MESH_EXTENSIONS = (".obj", ".off", ".ply", ".glb", ".gltf", ".stl")
"""What the ``files`` source picks up (anything trimesh reads as a mesh or point cloud)."""

PROCEDURAL_DEFAULT_COUNT = 24


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


# --------------------------------------------------------------------------------------
# Listing helpers


def _id_key(item_id: str) -> tuple[int, int, str]:
    """Sort key: numeric ids by value first, then the others by text."""
    return (0, int(item_id), "") if item_id.isdigit() else (1, 0, item_id)


def _split(ids: list[str], split: str) -> list[str]:
    """``ids`` (already sorted) → the ones in ``split`` (train = first half, test = rest)."""
    half = (len(ids) + 1) // 2
    if split == "all":
        return ids
    if split == "train":
        return ids[:half]
    if split == "test":
        return ids[half:]
    return []  # val: these sources have no validation split


def _select_categories(available: list[str], wanted: list[str], source: str) -> list[str]:
    """``data.categories`` matched case-insensitively against what the source has."""
    if not wanted:
        return sorted(available)
    out = []
    for name in wanted:
        try:
            out.append(canonical_name(name, available, f"{source} category"))
        except ValueError as e:
            raise ValueError(f"data.categories: {e}") from None
    return list(dict.fromkeys(out))


def _cap(items: list[str], per_category: int) -> list[str]:
    return items[:per_category] if per_category > 0 else items


def _require_dir(path: str, source: str) -> Path:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data.path={path!r} is not a folder (data.source={source})")
    return root


@contextlib.contextmanager
def _naming(path: str) -> Iterator[None]:
    """Prefix ``path`` to a ShapeError that does not name it yet (the rejects table shows it)."""
    try:
        yield
    except ShapeError as e:
        if path in str(e):
            raise
        raise ShapeError(f"{path}: {e}") from None


# --------------------------------------------------------------------------------------
# ShapeNetPart


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
    with _naming(path):
        return shape_from_points(
            shape_id, category, part_names, data[:, :3], data[:, 3:6], local, num_points, seed, "shapenetpart", meta
        )


def _iter_shapenetpart(data: DataConfig, seed: int) -> Iterator[SourceItem]:
    root = _require_dir(data.path, "shapenetpart")
    synsets = _read_synsets(root)
    starts = _read_pid_starts(root)
    by_synset = {v: canonical_name(k, list(SHAPENETPART_PARTS)) for k, v in synsets.items()}
    # Every official category may be asked for; one without a folder here yields nothing.
    categories = _select_categories(
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
        for item_id in _cap(ids, data.per_category):
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


# --------------------------------------------------------------------------------------
# Labeled PSB


def read_off(path: str) -> tuple[np.ndarray, np.ndarray]:
    """An OFF file → (vertices (V, 3) float64, faces (F, 3) int64), faces in file order.

    Polygons with more than 3 corners are fan-triangulated (each then adds faces, so label
    files that count polygons only match all-triangle meshes; PSB is all triangles).
    Raises ``ShapeError`` naming the file for a missing header, a truncated body, bad
    numbers or a face index out of range.
    """
    with open(path, "rb") as fh:
        raw = fh.read()
    lines = raw.splitlines()
    if b"#" in raw:
        lines = [ln.split(b"#", 1)[0] for ln in lines]
    if b"#" in raw or b"\n\n" in raw or b"\n\r\n" in raw:
        lines = [ln for ln in lines if ln.strip()]
    else:  # the common case: only a final newline to drop (a Python pass per line costs ~40%)
        while lines and not lines[-1].strip():
            lines.pop()
    if not lines:
        raise ShapeError(f"{path}: empty file")
    head = lines[0].strip()
    at = head.upper().find(b"OFF")
    if at < 0 or at > 2:  # OFF, COFF, NOFF, STOFF, ...
        raise ShapeError(f"{path}: not an OFF file (first line {head[:40]!r})")
    rest = head[at + 3 :].split()  # the counts may follow "OFF" on the same line
    if rest:
        counts, body = rest, lines[1:]
    elif len(lines) > 1:
        counts, body = lines[1].split(), lines[2:]
    else:
        raise ShapeError(f"{path}: truncated OFF (no vertex/face counts)")
    try:
        nv, nf = int(counts[0]), int(counts[1])
    except (IndexError, ValueError):
        raise ShapeError(f"{path}: bad OFF counts line {b' '.join(counts)[:60]!r}") from None
    if nv <= 0 or nf <= 0:
        raise ShapeError(f"{path}: OFF declares {nv} vertices and {nf} faces")
    if len(body) < nv + nf:
        raise ShapeError(
            f"{path}: truncated OFF: {nv} vertices and {nf} faces declared, only {len(body)} data lines found"
        )
    try:
        # np.loadtxt parses in C (~10x faster than Python float() on PSB's 40k-line files).
        vertices = np.loadtxt(body[:nv], dtype=np.float64, usecols=(0, 1, 2), ndmin=2)
    except (ValueError, IndexError) as e:
        raise ShapeError(f"{path}: unreadable vertex lines ({e})") from None
    if len(vertices) != nv:  # whitespace-only lines that loadtxt skipped
        raise ShapeError(f"{path}: {len(vertices)} vertex lines where {nv} were declared")
    try:
        table = np.loadtxt(body[nv : nv + nf], dtype=np.int64, ndmin=2)
    except ValueError:
        table = None  # ragged: polygons of several sizes, or colours on some faces
    if table is not None and len(table) == nf and table.shape[1] >= 4 and (table[:, 0] == 3).all():
        faces = table[:, 1:4]
    else:
        tris = []
        for ln in body[nv : nv + nf]:
            try:
                vals = [int(t) for t in ln.split()]
            except ValueError:
                raise ShapeError(f"{path}: bad face line {ln[:60]!r}") from None
            k = vals[0]
            if k < 3 or len(vals) < k + 1:
                raise ShapeError(f"{path}: bad face line {ln[:60]!r}")
            idx = vals[1 : k + 1]
            tris.extend([idx[0], idx[i], idx[i + 1]] for i in range(1, k - 1))
        faces = np.array(tris, dtype=np.int64).reshape(-1, 3)
    if faces.min() < 0 or faces.max() >= nv:
        raise ShapeError(f"{path}: face indices {faces.min()}..{faces.max()} outside 0..{nv - 1}")
    return vertices, faces


def read_psb_labels(path: str, num_faces: int, part_names: list[str]) -> np.ndarray:
    """A PSB ``_labels.txt`` (a part name line, then its 1-based face indices) → (F,) int64.

    Every face must carry exactly one part; raises ``ShapeError`` naming the file for an
    unknown part name, an index outside 1..num_faces, a face labelled twice with different
    parts, or faces left unlabelled.
    """
    index = {name: k for k, name in enumerate(part_names)}
    labels = np.full(num_faces, -1, np.int64)
    current: int | None = None
    with open(path) as fh:
        text = fh.read()
    for line in text.splitlines():
        tokens = line.split()
        if not tokens:
            continue
        if not tokens[0].lstrip("-").isdigit():
            name = line.strip()
            if name not in index:
                raise ShapeError(f"{path}: unknown part {name!r}; this category's parts are {part_names}")
            current = index[name]
            continue
        if current is None:
            raise ShapeError(f"{path}: face indices before any part name")
        try:
            faces = np.array(tokens, dtype=np.int64) - 1
        except ValueError:
            raise ShapeError(f"{path}: bad face index line {line[:60]!r}") from None
        if faces.min() < 0 or faces.max() >= num_faces:
            bad = int(faces[(faces < 0) | (faces >= num_faces)][0]) + 1
            raise ShapeError(f"{path}: references face {bad} but the mesh has {num_faces} faces (1-based)")
        clash = (labels[faces] >= 0) & (labels[faces] != current)
        if clash.any():
            raise ShapeError(
                f"{path}: face {int(faces[clash][0]) + 1} is labelled both "
                f"{part_names[labels[faces[clash][0]]]!r} and {part_names[current]!r}"
            )
        labels[faces] = current
    missing = np.flatnonzero(labels < 0)
    if len(missing):
        raise ShapeError(
            f"{path}: {len(missing)} of {num_faces} faces have no label (first: face {int(missing[0]) + 1}, 1-based)"
        )
    return labels


def load_psb_mesh(off_path: str, shape_id: str, category: str, num_points: int, seed: int) -> Shape:
    """One Labeled-PSB mesh and its labels file → a Shape with per-point labels and the mesh."""
    part_names = part_names_for(category, source="psb")
    labels_path = off_path[: -len(".off")] + "_labels.txt"
    if not os.path.isfile(labels_path):
        raise ShapeError(f"{off_path}: no labels file {os.path.basename(labels_path)} beside it")
    vertices, faces = read_off(off_path)
    face_labels = read_psb_labels(labels_path, len(faces), part_names)
    meta = {"file": off_path, "labels_file": labels_path}
    mesh = Mesh(vertices, faces, face_labels)
    with _naming(off_path):
        return shape_from_mesh(shape_id, category, part_names, mesh, num_points, seed, "psb", meta)


def _iter_psb(data: DataConfig, seed: int) -> Iterator[SourceItem]:
    root = _require_dir(data.path, "psb")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.off")))
    for category in _select_categories(folders, data.categories, "psb"):
        folder = root / category
        ids = sorted((p.stem for p in folder.glob("*.off")), key=_id_key)
        # The category's label order is the embedded table's, whatever files are present.
        name = next((k for k in PSB_PARTS if k.casefold() == category.casefold()), category)
        for item_id in _cap(_split(ids, data.split), data.per_category):
            shape_id = f"psb/{category}/{item_id}"
            path = str(folder / f"{item_id}.off")
            load = functools.partial(load_psb_mesh, path, shape_id, name, data.num_points, derive_seed(seed, shape_id))
            yield SourceItem(shape_id, name, path, load)


# --------------------------------------------------------------------------------------
# Files (any mesh or point cloud trimesh reads)


def load_any_file(
    path: str, shape_id: str, category: str, part_names: list[str] | None, num_points: int, seed: int
) -> Shape:
    """A mesh / point cloud / scene file → an unlabelled Shape (meshes keep their mesh).

    part_names None: looked up from ``category`` now (``ValueError`` when unknown), so one
    odd folder rejects its own files and not the run.
    """
    import trimesh  # local: trimesh's import is slow and only this source needs it here

    if part_names is None:
        try:
            part_names = _part_names_lazy(category)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    if os.path.getsize(path) == 0:
        raise ShapeError(f"{path}: empty file")
    try:
        loaded = trimesh.load(path, process=False)
    except Exception as e:  # noqa: BLE001 - trimesh raises many types for bad files
        raise ShapeError(f"{path}: trimesh cannot read it ({type(e).__name__}: {e})") from None
    meshes, clouds = [], []
    # A scene (glb, multi-object obj): every geometry with its node transform applied.
    geoms = list(loaded.dump()) if isinstance(loaded, trimesh.Scene) else [loaded]
    for g in geoms:
        if isinstance(g, trimesh.Trimesh) and len(g.faces):
            meshes.append(g)
        elif isinstance(g, trimesh.PointCloud) and len(g.vertices):
            clouds.append(np.asarray(g.vertices))
        elif isinstance(g, trimesh.Trimesh) and len(g.vertices):
            clouds.append(np.asarray(g.vertices))  # a PLY of vertices only reads as a faceless mesh
    meta = {"file": path}
    with _naming(path):
        return _shape_from_geometry(shape_id, category, part_names, meshes, clouds, num_points, seed, meta)


def _shape_from_geometry(
    shape_id: str,
    category: str,
    part_names: list[str],
    meshes: list,
    clouds: list[np.ndarray],
    num_points: int,
    seed: int,
    meta: dict,
) -> Shape:
    if meshes:
        offsets = np.cumsum([0] + [len(m.vertices) for m in meshes])
        vertices = np.concatenate([np.asarray(m.vertices, np.float64) for m in meshes])
        faces = np.concatenate([np.asarray(m.faces, np.int64) + o for m, o in zip(meshes, offsets)])
        return shape_from_mesh(shape_id, category, part_names, Mesh(vertices, faces), num_points, seed, "files", meta)
    if clouds:
        points = np.concatenate(clouds)
        return shape_from_points(shape_id, category, part_names, points, None, None, num_points, seed, "files", meta)
    raise ShapeError("no faces and no points in it")


def _part_names_lazy(category: str) -> list[str]:
    """Known tables: ShapeNetPart, Labeled PSB, then the procedural one."""
    return part_names_for(category)


# Shape ids double as storage keys: anything outside this set becomes "_".
_SAFE = re.compile(r"[^A-Za-z0-9._/\-]")


def _iter_files(data: DataConfig, seed: int) -> Iterator[SourceItem]:
    given = Path(data.path).expanduser()
    if given.is_file():
        root, files = given.parent, [given]
    elif given.is_dir():
        root = given
        files = sorted(p for p in given.rglob("*") if p.is_file() and p.suffix.lower() in MESH_EXTENSIONS)
    else:
        raise FileNotFoundError(f"data.path={data.path!r} is neither a file nor a folder (data.source=files)")
    # Ids drop the extension; two files differing only by extension keep theirs, to stay unique.
    keys = [_SAFE.sub("_", p.relative_to(root).with_suffix("").as_posix()) for p in files]
    counts = collections.Counter(keys)
    by_category: dict[str, list[tuple[str, Path]]] = {}
    for key, p in zip(keys, files):
        if counts[key] > 1:
            key = f"{key}_{p.suffix.lstrip('.').lower()}"
        category = data.category or (p.parent.name if p.parent != root else root.resolve().name)
        by_category.setdefault(category, []).append((f"files/{key}", p))
    # data.part_names, when given, name the parts of every file (normally with data.category).
    names = list(data.part_names) if data.part_names else None
    for category in _select_categories(list(by_category), data.categories, "files"):
        entries = sorted(by_category[category], key=lambda e: e[0])
        selected = set(_cap(_split([e[0] for e in entries], data.split), data.per_category))
        for shape_id, p in entries:
            if shape_id not in selected:
                continue
            load = functools.partial(
                load_any_file, str(p), shape_id, category, names, data.num_points, derive_seed(seed, shape_id)
            )
            yield SourceItem(shape_id, category, str(p), load)


# --------------------------------------------------------------------------------------
# Procedural


# The procedural corpus is unbounded, so its splits are disjoint ranges of instance
# indices rather than halves of one list: ``all``/``train`` make instances 0..n−1, ``val``
# and ``test`` held-out instances (other indices, hence other seeds and proportions).
PROCEDURAL_SPLIT_START = {"all": 0, "train": 0, "val": 500_000, "test": 1_000_000}


def _iter_procedural(data: DataConfig, seed: int) -> Iterator[SourceItem]:
    from generation.procedural import make_shape  # lazy: distill does not import generation

    count = data.per_category or PROCEDURAL_DEFAULT_COUNT
    start = PROCEDURAL_SPLIT_START[data.split]
    # Every procedural category may be asked for; the default corpus is the ShapeNetPart eight.
    wanted = data.categories or list(PROCEDURAL_SNP_CATEGORIES)
    for category in _select_categories(list(PROCEDURAL_PARTS), wanted, "procedural"):
        for index in range(start, start + count):
            shape_id = f"procedural/{category}/{index:05d}"
            load = functools.partial(make_shape, category, index, seed, data.num_points)
            yield SourceItem(shape_id, category, f"procedural:{category}:{index}", load)


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


def _iter_mix(data: DataConfig, seed: int) -> Iterator[SourceItem]:
    groups = []
    for k, entry in enumerate(data.mix):
        try:
            groups.append(list(_SOURCES[entry.source](entry_config(data, entry), seed)))
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


def _with_vocabulary(load: Callable[[], Shape], datasets: tuple[str, ...]) -> Shape:
    from distill.vocab import to_vocabulary

    return to_vocabulary(load(), datasets)


_SOURCES: dict[str, Callable[[DataConfig, int], Iterator[SourceItem]]] = {
    "shapenetpart": _iter_shapenetpart,
    "psb": _iter_psb,
    "files": _iter_files,
    "procedural": _iter_procedural,
    "mix": _iter_mix,
}


def iter_items(data: DataConfig, seed: int) -> Iterator[SourceItem]:
    """The items of ``data.source``, filtered by ``data.categories``, ``data.split`` and
    ``data.per_category``, in a stable order (category, then id).

    Raises ``ValueError`` (unknown category filter, a source this module does not read)
    or ``FileNotFoundError`` (``data.path`` missing) when listing starts.
    """
    if data.source not in _SOURCES:
        raise ValueError(
            f"data.source={data.source!r} has no file reader here (readers: {', '.join(sorted(_SOURCES))}); "
            "shape tables (table, generated) are read by the cluster storage layer"
        )
    # Materialise the listing so configuration errors surface at the call, not at the first next().
    items = list(_SOURCES[data.source](data, seed))
    if data.vocabulary:
        datasets = tuple(data.vocabulary)
        items = [
            SourceItem(i.shape_id, i.category, i.path, functools.partial(_with_vocabulary, i.load, datasets))
            for i in items
        ]
    return iter(items)
