"""``data.source=files``: every mesh or point cloud trimesh reads under ``data.path``, unlabelled.

Ids ``files/<path relative to data.path, without extension>``; category from
``data.category`` or the file's folder name; splits by sorted id (``common.split_ids``).
"""

from __future__ import annotations

import collections
import functools
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from distill.categories import part_names_for
from distill.errors import NotFoundError
from distill.readers.common import cap, naming, select_categories, split_range
from distill.readers.registry import SourceItem
from distill.records import Mesh, Shape, ShapeError
from distill.sampling import derive_seed, shape_from_mesh, shape_from_points

if TYPE_CHECKING:
    from distill.config import DataConfig

MESH_EXTENSIONS = (".obj", ".off", ".ply", ".glb", ".gltf", ".stl")
"""What the ``files`` source picks up (anything trimesh reads as a mesh or point cloud)."""


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
    with naming(path):
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


def read(data: DataConfig, seed: int) -> Iterator[SourceItem]:
    given = Path(data.path).expanduser()
    if given.is_file():
        root, listing = given.parent, {data.category or given.parent.resolve().name: [given.name]}
    elif given.is_dir():
        root, listing = given, _listing(given, data.category)
    else:
        raise NotFoundError(
            f"data.path={data.path!r} is neither a file nor a folder (data.source=files) — "
            "point data.path at a mesh or point-cloud file, or a folder of them"
        )
    # data.part_names, when given, name the parts of every file (normally with data.category).
    names = list(data.part_names) if data.part_names else None
    for category in select_categories(list(listing), data.categories, "files"):
        rels = listing.pop(category)  # freed once its items are handed on
        rels.sort(key=_file_key)
        chosen = cap(split_range(len(rels), data.split), data.per_category)
        previous = ""
        for i in chosen:
            path, key = _path_and_key(rels[i])
            shape_id = f"files/{key}"
            if key == previous:  # two paths made one id by the safe-character rule
                shape_id = f"{shape_id}_{i}"
            previous = key
            load = functools.partial(
                load_any_file, str(root / path), shape_id, category, names, data.num_points, derive_seed(seed, shape_id)
            )
            yield SourceItem(shape_id, category, str(root / path), load)


_SUFFIXED = "\0"
"""Marks a listed path whose id keeps its extension (another file of its folder has its stem)."""


def _path_and_key(rel: str) -> tuple[str, str]:
    """A listed file (its path relative to ``data.path``, ``_SUFFIXED`` at its end where
    it keeps its extension) → (that path, its id without ``files/``): the path without
    extension, unsafe characters as ``_``, plus ``_<ext>`` where files of one folder
    share that id."""
    if not rel.endswith(_SUFFIXED):
        return rel, _SAFE.sub("_", os.path.splitext(rel)[0])
    path = rel[: -len(_SUFFIXED)]
    stem, ext = os.path.splitext(path)
    return path, f"{_SAFE.sub('_', stem)}_{ext.lstrip('.').lower()}"


def _file_key(rel: str) -> str:
    return _path_and_key(rel)[1]


def _listing(root: Path, category: str) -> dict[str, list[str]]:
    """The mesh files under ``root`` by category → one string each (its path relative to
    ``root``): ~130 B a file at the peak, sort keys included (~100 MB at 800K files),
    where ``Path`` objects and id tuples took ~650 B. Symlinked folders are not followed
    (as ``rglob``)."""
    by_category: dict[str, list[str]] = {}
    root_category = category or root.resolve().name
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        meshes = sorted(f for f in files if os.path.splitext(f)[1].lower() in MESH_EXTENSIONS)
        if not meshes:
            continue
        rel_folder = os.path.relpath(folder, root)
        prefix = "" if rel_folder == "." else rel_folder.replace(os.sep, "/") + "/"
        stems = [_SAFE.sub("_", os.path.splitext(f)[0]) for f in meshes]
        shared = collections.Counter(stems)
        out = by_category.setdefault(category or (Path(folder).name if prefix else root_category), [])
        for f, stem in zip(meshes, stems):
            if os.path.isfile(os.path.join(folder, f)):
                out.append(prefix + f + (_SUFFIXED if shared[stem] > 1 else ""))
    return by_category
