"""The knowledge table (``{root}/{run}/knowledge/round_0/``): one row per knowledge unit.

UNIT_SCHEMA
    shape_id: string · view: int16 · label: int16 (index into the shape's part_names) ·
    score: float32 in [0, 1] · point_idx: list<int32> (indices into the shape's points) ·
    teacher: string · round: int16

In memory the units of one shape are one ``KnowledgeUnits``, concatenated with offsets.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

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
