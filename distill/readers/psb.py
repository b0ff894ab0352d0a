"""``data.source=psb``: the Labeled PSB, ``<Category>/<id>.off`` + ``<id>_labels.txt``.

Ids ``psb/<Category>/<id>``; splits by sorted id (``common.split_ids``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from distill.categories import PSB_PARTS, part_names_for
from distill.readers.common import cap, id_key, naming, require_dir, select_categories, split_ids
from distill.readers.registry import SourceItem
from distill.records import Mesh, Shape, ShapeError
from distill.sampling import derive_seed, shape_from_mesh

if TYPE_CHECKING:
    from distill.config import DataConfig


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
    with naming(off_path):
        return shape_from_mesh(shape_id, category, part_names, mesh, num_points, seed, "psb", meta)


def read(data: DataConfig, seed: int) -> Iterator[SourceItem]:
    root = require_dir(data.path, "psb")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.off")))
    for category in select_categories(folders, data.categories, "psb"):
        folder = root / category
        ids = sorted((p.stem for p in folder.glob("*.off")), key=id_key)
        # The category's label order is the embedded table's, whatever files are present.
        name = next((k for k in PSB_PARTS if k.casefold() == category.casefold()), category)
        for item_id in cap(split_ids(ids, data.split), data.per_category):
            shape_id = f"psb/{category}/{item_id}"
            path = str(folder / f"{item_id}.off")
            load = functools.partial(load_psb_mesh, path, shape_id, name, data.num_points, derive_seed(seed, shape_id))
            yield SourceItem(shape_id, name, path, load)
