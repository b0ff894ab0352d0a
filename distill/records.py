"""The records that flow between stages, and their Parquet schemas (DESIGN §2).

This is the one module that defines the tables:

shape table (``{root}/{run}/shapes/``), one row per shape
    shape_id: string (unique in its corpus) · category: string · part_names: list<string>
    (the category's label order) · num_points: int32 · points: list<float32> (N·3, xyz
    interleaved, centred, unit sphere) · normals: list<float32> | null (N·3) ·
    labels: list<int32> | null (N; −1 = unlabelled) · source: string (dataset name |
    procedural | generated) · mesh: binary | null (``.npz``: vertices (V,3) float32 in the
    same normalised frame, faces (F,3) int32, face_labels (F,) int32 optional) ·
    meta: string (JSON: file path, prompt, seed, ...)

knowledge table (``{root}/{run}/knowledge/round_{k}/``), one row per knowledge unit
    shape_id: string · view: int16 · label: int16 (index into the shape's part_names) ·
    score: float32 in [0, 1] · point_idx: list<int32> (indices into the shape's points) ·
    teacher: string · round: int16

Variable-size point sets are flat lists in Parquet and (N, 3) arrays in memory.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

SHAPE_SCHEMA = pa.schema(
    [
        ("shape_id", pa.string()),
        ("category", pa.string()),
        ("part_names", pa.list_(pa.string())),
        ("num_points", pa.int32()),
        ("points", pa.list_(pa.float32())),
        ("normals", pa.list_(pa.float32())),
        ("labels", pa.list_(pa.int32())),
        ("source", pa.string()),
        ("mesh", pa.binary()),
        ("meta", pa.string()),
    ]
)

UNIT_SCHEMA = pa.schema(
    [
        ("shape_id", pa.string()),
        ("view", pa.int16()),
        ("label", pa.int16()),
        ("score", pa.float32()),
        ("point_idx", pa.list_(pa.int32())),
        ("teacher", pa.string()),
        ("round", pa.int16()),
    ]
)

REJECT_SCHEMA = pa.schema([("item", pa.string()), ("stage", pa.string()), ("reason", pa.string())])


class ShapeError(ValueError):
    """A shape that cannot be used; the message names the shape and the reason."""


@dataclass
class Mesh:
    """A triangle mesh with optional per-face part labels.

    vertices: (V, 3) float32 · faces: (F, 3) int32 · face_labels: (F,) int32 or None
    """

    vertices: np.ndarray
    faces: np.ndarray
    face_labels: np.ndarray | None = None

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        arrays = {"vertices": self.vertices.astype(np.float32), "faces": self.faces.astype(np.int32)}
        if self.face_labels is not None:
            arrays["face_labels"] = self.face_labels.astype(np.int32)
        np.savez_compressed(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Mesh":
        with np.load(io.BytesIO(data)) as z:
            labels = z["face_labels"] if "face_labels" in z.files else None
            return cls(z["vertices"], z["faces"], labels)


@dataclass
class Shape:
    """One shape (DESIGN §2).

    points: (N, 3) float32, centred and scaled into the unit sphere · normals: (N, 3)
    float32 or None · labels: (N,) int64 or None (−1 = unlabelled; else an index into
    ``part_names``) · mesh: the surface the points were sampled from, in the same frame.
    """

    shape_id: str
    category: str
    part_names: list[str]
    points: np.ndarray
    normals: np.ndarray | None = None
    labels: np.ndarray | None = None
    source: str = "unknown"
    mesh: Mesh | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.points = np.asarray(self.points, dtype=np.float32)
        if self.points.ndim != 2 or self.points.shape[1] != 3:
            raise ShapeError(f"shape {self.shape_id}: points must be (N, 3), got {self.points.shape}")
        if len(self.points) == 0:
            raise ShapeError(f"shape {self.shape_id}: no points")
        if not np.isfinite(self.points).all():
            raise ShapeError(f"shape {self.shape_id}: points contain NaN or inf")
        n = len(self.points)
        if self.normals is not None:
            self.normals = np.asarray(self.normals, dtype=np.float32)
            if self.normals.shape != (n, 3):
                raise ShapeError(f"shape {self.shape_id}: normals {self.normals.shape} != ({n}, 3)")
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.int64)
            if self.labels.shape != (n,):
                raise ShapeError(f"shape {self.shape_id}: labels {self.labels.shape} != ({n},)")
            if self.labels.max(initial=-1) >= len(self.part_names) or self.labels.min(initial=0) < -1:
                raise ShapeError(f"shape {self.shape_id}: labels outside [-1, {len(self.part_names) - 1}]")

    @property
    def num_points(self) -> int:
        return len(self.points)

    @property
    def num_parts(self) -> int:
        return len(self.part_names)


def shapes_to_table(shapes: Iterable[Shape]) -> pa.Table:
    """Shapes → one Arrow table with ``SHAPE_SCHEMA``."""
    cols: dict[str, list[Any]] = {name: [] for name in SHAPE_SCHEMA.names}
    for s in shapes:
        cols["shape_id"].append(s.shape_id)
        cols["category"].append(s.category)
        cols["part_names"].append(list(s.part_names))
        cols["num_points"].append(s.num_points)
        cols["points"].append(s.points.reshape(-1))
        cols["normals"].append(None if s.normals is None else s.normals.reshape(-1))
        cols["labels"].append(None if s.labels is None else s.labels.astype(np.int32))
        cols["source"].append(s.source)
        cols["mesh"].append(None if s.mesh is None else s.mesh.to_bytes())
        cols["meta"].append(json.dumps(s.meta, sort_keys=True, default=str))
    return pa.Table.from_pydict(cols, schema=SHAPE_SCHEMA)


def _flat(values: Any, dtype: Any) -> np.ndarray:
    return np.asarray(values, dtype=dtype)


def row_to_shape(row: dict[str, Any]) -> Shape:
    """One row (a dict as from ``Table.to_pylist`` or a Ray Data row) → a ``Shape``."""
    n = int(row["num_points"])
    normals = row.get("normals")
    labels = row.get("labels")
    mesh = row.get("mesh")
    meta = row.get("meta") or "{}"
    return Shape(
        shape_id=str(row["shape_id"]),
        category=str(row["category"]),
        part_names=[str(p) for p in row["part_names"]],
        points=_flat(row["points"], np.float32).reshape(n, 3),
        normals=None if normals is None else _flat(normals, np.float32).reshape(n, 3),
        labels=None if labels is None else _flat(labels, np.int64),
        source=str(row["source"]),
        mesh=None if mesh is None else Mesh.from_bytes(bytes(mesh)),
        meta=json.loads(meta) if isinstance(meta, str) else dict(meta),
    )


def table_to_shapes(table: pa.Table) -> list[Shape]:
    """An Arrow table with ``SHAPE_SCHEMA`` columns → shapes, in row order."""
    return [row_to_shape(r) for r in table.to_pylist()]


@dataclass
class KnowledgeUnits:
    """The knowledge units of one shape, concatenated with offsets (Pointcept style).

    view, label: (K,) int64 · score: (K,) float32 in [0, 1] · point_idx: (M,) int64, the
    covered point indices of all units back to back · offsets: (K + 1,) int64, unit k
    covers ``point_idx[offsets[k]:offsets[k + 1]]``.
    """

    shape_id: str
    view: np.ndarray
    label: np.ndarray
    score: np.ndarray
    point_idx: np.ndarray
    offsets: np.ndarray
    teacher: str = "unknown"
    round: int = 0

    def __post_init__(self) -> None:
        k = len(self.label)
        if not (len(self.view) == len(self.score) == k and len(self.offsets) == k + 1):
            raise ValueError(f"units of {self.shape_id}: inconsistent lengths")
        if self.offsets[-1] != len(self.point_idx):
            raise ValueError(f"units of {self.shape_id}: offsets do not end at len(point_idx)")

    def __len__(self) -> int:
        return len(self.label)

    @classmethod
    def empty(cls, shape_id: str, teacher: str = "unknown", round: int = 0) -> "KnowledgeUnits":
        z = np.zeros(0, dtype=np.int64)
        return cls(shape_id, z, z, np.zeros(0, np.float32), z, np.zeros(1, np.int64), teacher, round)

    @classmethod
    def from_lists(
        cls,
        shape_id: str,
        views: list[int],
        labels: list[int],
        scores: list[float],
        point_sets: list[np.ndarray],
        teacher: str = "unknown",
        round: int = 0,
    ) -> "KnowledgeUnits":
        sizes = [len(p) for p in point_sets]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        idx = np.concatenate(point_sets).astype(np.int64) if point_sets else np.zeros(0, np.int64)
        return cls(
            shape_id,
            np.asarray(views, np.int64),
            np.asarray(labels, np.int64),
            np.asarray(scores, np.float32),
            idx,
            offsets,
            teacher,
            round,
        )

    def unit_points(self, k: int) -> np.ndarray:
        return self.point_idx[self.offsets[k] : self.offsets[k + 1]]

    def with_scores(self, score: np.ndarray, round: int) -> "KnowledgeUnits":
        return KnowledgeUnits(
            self.shape_id,
            self.view,
            self.label,
            np.asarray(score, np.float32),
            self.point_idx,
            self.offsets,
            self.teacher,
            round,
        )


def units_to_table(units: Iterable[KnowledgeUnits]) -> pa.Table:
    """Knowledge units of many shapes → one Arrow table with ``UNIT_SCHEMA`` (a row a unit)."""
    cols: dict[str, list[Any]] = {name: [] for name in UNIT_SCHEMA.names}
    for u in units:
        for k in range(len(u)):
            cols["shape_id"].append(u.shape_id)
            cols["view"].append(int(u.view[k]))
            cols["label"].append(int(u.label[k]))
            cols["score"].append(float(u.score[k]))
            cols["point_idx"].append(u.unit_points(k).astype(np.int32))
            cols["teacher"].append(u.teacher)
            cols["round"].append(u.round)
    return pa.Table.from_pydict(cols, schema=UNIT_SCHEMA)


def table_to_units(table: pa.Table) -> dict[str, KnowledgeUnits]:
    """A knowledge table → units grouped by shape id (row order kept within a shape)."""
    return rows_to_units(table.to_pylist())


def rows_to_units(table_rows: Iterable[dict[str, Any]]) -> dict[str, KnowledgeUnits]:
    """Knowledge-table rows (dicts, e.g. from Ray Data) → units grouped by shape id."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for r in table_rows:
        rows.setdefault(r["shape_id"], []).append(r)
    out = {}
    for sid, rs in rows.items():
        out[sid] = KnowledgeUnits.from_lists(
            sid,
            [r["view"] for r in rs],
            [r["label"] for r in rs],
            [r["score"] for r in rs],
            [np.asarray(r["point_idx"], np.int64) for r in rs],
            teacher=str(rs[0]["teacher"]),
            round=int(rs[0]["round"]),
        )
    return out
