"""Backward distillation's round ≥ 1 tables (``{run}/knowledge/round_{k}/{student}/``) and the
prepared training sample as one Arrow row (Ray Data's training ingest).

SCORE_SCHEMA, one row per shape, one part per knowledge part (same name)
    shape_id: string · score: list<float32>, one per unit in round 0's unit order ·
    pair_weight: list<float32> or null, for a point-level rule one relative weight per
    (point, unit) pair in round 0's pair order
SAMPLE_SCHEMA, one row per prepared sample (``distill.samples.ShapeSample``)
    shape_id: string · category: int32 (the student's ``LabelSpace`` index) · num_points:
    int32 · points, normals: list<float32> (N·3, normals null when absent) · point_idx,
    unit_offsets, unit_slot: list<int32> · unit_score: list<float32> · pair_weight:
    list<float32> or null (a point-level re-scoring) · superpoints: list<int32> or null
    (N; carried for ``train.superpoint_consistency``)
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

SCORE_SCHEMA = pa.schema(
    [("shape_id", pa.string()), ("score", pa.list_(pa.float32())), ("pair_weight", pa.list_(pa.float32()))]
)

SAMPLE_SCHEMA = pa.schema(
    [
        ("shape_id", pa.string()),
        ("category", pa.int32()),
        ("num_points", pa.int32()),
        ("points", pa.list_(pa.float32())),
        ("normals", pa.list_(pa.float32())),
        ("point_idx", pa.list_(pa.int32())),
        ("unit_offsets", pa.list_(pa.int32())),
        ("unit_slot", pa.list_(pa.int32())),
        ("unit_score", pa.list_(pa.float32())),
        ("pair_weight", pa.list_(pa.float32())),
        ("superpoints", pa.list_(pa.int32())),
    ]
)


def scores_to_table(scores: dict[str, np.ndarray], pairs: dict[str, np.ndarray] | None = None) -> pa.Table:
    """``SCORE_SCHEMA`` rows, sorted by shape id (pairs: relative pair weights, if any)."""
    ids = sorted(scores)
    pairs = pairs or {}
    return pa.table(
        {
            "shape_id": ids,
            "score": [np.asarray(scores[i], np.float32) for i in ids],
            "pair_weight": [np.asarray(pairs[i], np.float32) if i in pairs else None for i in ids],
        },
        schema=SCORE_SCHEMA,
    )


def table_to_scores(table: pa.Table) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The inverse of ``scores_to_table``: (scores by shape id, pair weights of the shapes
    that have them). A table without the pair_weight column (older releases) has none."""
    ids = table.column("shape_id").to_pylist()
    scores = {sid: np.asarray(sc, np.float32) for sid, sc in zip(ids, table.column("score").to_pylist())}
    pairs: dict[str, np.ndarray] = {}
    if "pair_weight" in table.column_names:
        for sid, pw in zip(ids, table.column("pair_weight").to_pylist()):
            if pw is not None:
                pairs[sid] = np.asarray(pw, np.float32)
    return scores, pairs
