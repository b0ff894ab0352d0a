"""The predictions tables: a student's per-point labels of shapes, one row per (shape, student).

Written by evaluation (``{root}/{run}/predictions/``, one part per shape part) and by
segmentation (``{root}/{run}/segment/labels/``), with one schema:

PREDICTION_SCHEMA
    shape_id: string · category: string · student: string (``<run>/<student>``: the run
    whose checkpoint predicted, then the student's name) · labels: list<int32> (N; an index
    into the shape's part_names) · points: list<float32> | null (N·3, the shape's points,
    so the labels can be used without the shape table; segmentation writes them, evaluation
    leaves them null as its shapes are in the run's shape table)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

PREDICTION_SCHEMA = pa.schema(
    [
        ("shape_id", pa.string()),
        ("category", pa.string()),
        ("student", pa.string()),
        ("labels", pa.list_(pa.int32())),
        ("points", pa.list_(pa.float32())),
    ]
)


@dataclass
class Prediction:
    """One student's labels of one shape. labels: (N,) int · points: (N, 3) float32 or None."""

    shape_id: str
    category: str
    student: str
    labels: np.ndarray
    points: np.ndarray | None = None


def predictions_to_table(predictions: Iterable[Prediction]) -> pa.Table:
    """Predictions → one Arrow table with ``PREDICTION_SCHEMA``."""
    cols: dict[str, list[Any]] = {name: [] for name in PREDICTION_SCHEMA.names}
    for p in predictions:
        cols["shape_id"].append(p.shape_id)
        cols["category"].append(p.category)
        cols["student"].append(p.student)
        cols["labels"].append(np.asarray(p.labels).astype(np.int32))
        cols["points"].append(None if p.points is None else np.asarray(p.points, np.float32).reshape(-1))
    return pa.Table.from_pydict(cols, schema=PREDICTION_SCHEMA)


def table_to_predictions(table: pa.Table) -> list[Prediction]:
    """A predictions table → predictions in row order (labels (N,) int64, points (N, 3) or None)."""
    out = []
    for r in table.to_pylist():
        points = r.get("points")
        out.append(
            Prediction(
                str(r["shape_id"]),
                str(r["category"]),
                str(r["student"]),
                np.asarray(r["labels"], np.int64),
                None if points is None else np.asarray(points, np.float32).reshape(-1, 3),
            )
        )
    return out
