"""The shape table (``{root}/{run}/shapes/``): one row per shape (docs/design.md §2).

SHAPE_SCHEMA
    shape_id: string (unique in its corpus) · category: string · part_names: list<string>
    (the category's label order) · num_points: int32 · points: list<float32> (N·3, xyz
    interleaved, centred, unit sphere) · normals: list<float32> | null (N·3) ·
    labels: list<int32> | null (N; −1 = unlabelled) · source: string (dataset name |
    procedural | generated) · mesh: binary | null (``.npz``: vertices (V,3) float32 in the
    same normalised frame, faces (F,3) int32, face_labels (F,) int32 optional) ·
    meta: string (JSON: file path, prompt, seed, ...) · superpoints: list<int32> | null (N;
    the point's geometric segment, 0..S−1, ``distill.superpoints``; null in tables written
    before the column existed, where readers compute it)

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
        ("superpoints", pa.list_(pa.int32())),
    ]
)


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
    """One shape (docs/design.md §2).

    points: (N, 3) float32, centred and scaled into the unit sphere · normals: (N, 3)
    float32 or None · labels: (N,) int64 or None (−1 = unlabelled; else an index into
    ``part_names``) · mesh: the surface the points were sampled from, in the same frame ·
    superpoints: (N,) int64 or None, the geometric segment of each point (``distill.superpoints``).
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
    superpoints: np.ndarray | None = None

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
        if self.superpoints is not None:
            self.superpoints = np.asarray(self.superpoints, dtype=np.int64)
            if self.superpoints.shape != (n,) or self.superpoints.min(initial=0) < 0:
                raise ShapeError(
                    f"shape {self.shape_id}: superpoints {self.superpoints.shape} do not match its {n} points "
                    "(or are negative): re-run ingest to recompute them"
                )

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
        cols["superpoints"].append(None if s.superpoints is None else s.superpoints.astype(np.int32))
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
    superpoints = row.get("superpoints")
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
        superpoints=None if superpoints is None else _flat(superpoints, np.int64),
    )


def table_to_shapes(table: pa.Table) -> list[Shape]:
    """An Arrow table with ``SHAPE_SCHEMA`` columns → shapes, in row order."""
    return [row_to_shape(r) for r in table.to_pylist()]
