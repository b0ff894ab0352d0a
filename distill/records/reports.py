"""What stage workers hand the driver instead of data: small rows, a few per part.

PIECE_SCHEMA (extraction), one row per knowledge piece written
    piece: string (its part name) · new: int64 (shapes given knowledge) · rejected: int64 ·
    units: int64
GENERATE_RESULT_SCHEMA (generation), one row per asked shape
    shape_id: string · error: string ("" when written) · part: string (the part written)
RESCORE_RESULT_SCHEMA (re-scoring), one row per shape part re-scored
    part: string (the shape part) · shapes: int64 · units: int64 · score_sum: float64
SUMS_SCHEMA (evaluation), per method and category: the sums of shape mIoU (``MIoUSums``)
    method: string ("" for a row that only reports a category seen) · category: string ·
    sum: float64 · count: float64
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from distill.metrics import MIoUSums

PIECE_SCHEMA = pa.schema([("piece", pa.string()), ("new", pa.int64()), ("rejected", pa.int64()), ("units", pa.int64())])
"""What an extraction worker hands the driver: one row per knowledge piece written."""

GENERATE_RESULT_SCHEMA = pa.schema([("shape_id", pa.string()), ("error", pa.string()), ("part", pa.string())])
"""What a generation writing task hands the driver: one row per asked shape, error "" when written."""

RESCORE_RESULT_SCHEMA = pa.schema(
    [("part", pa.string()), ("shapes", pa.int64()), ("units", pa.int64()), ("score_sum", pa.float64())]
)
"""What a re-scoring actor hands the driver: one row per shape part whose scores it wrote."""

SUMS_SCHEMA = pa.schema(
    [("method", pa.string()), ("category", pa.string()), ("sum", pa.float64()), ("count", pa.float64())]
)
"""What an evaluation worker hands the driver: per-category sums of shape mIoU per method."""


SEEN = ""
"""The method of a ``SUMS_SCHEMA`` row that only reports a category seen."""
UNTRAINED = "~untrained"
"""The method of a row that reports a category seen that no student was trained for."""


def sums_to_table(sums: dict[str, MIoUSums], categories: set[str], untrained: set[str] = frozenset()) -> pa.Table:
    """Each method's sums, plus a row per category seen (``SEEN``) and per category seen
    that no student knows (``UNTRAINED``) → ``SUMS_SCHEMA`` rows."""
    rows = [{"method": m, "category": c, "sum": s, "count": n} for m, t in sums.items() for c, (s, n) in t.sums.items()]
    rows += [{"method": SEEN, "category": c, "sum": 0.0, "count": 0.0} for c in sorted(categories)]
    rows += [{"method": UNTRAINED, "category": c, "sum": 0.0, "count": 0.0} for c in sorted(untrained)]
    return pa.Table.from_pylist(rows, schema=SUMS_SCHEMA)


def add_sums(
    rows: Iterable[dict[str, Any]], total: dict[str, MIoUSums], categories: set[str], untrained: set[str] | None = None
) -> None:
    """The inverse of ``sums_to_table``: merge ``SUMS_SCHEMA`` rows into ``total`` (a ``MIoUSums``
    per method, every method of the rows present), the categories they report into
    ``categories`` and those no student knows into ``untrained``."""
    for r in rows:
        if r["method"] == UNTRAINED:
            if untrained is not None:
                untrained.add(r["category"])
        elif r["method"] != SEEN:
            total[r["method"]].merge(MIoUSums({r["category"]: [r["sum"], r["count"]]}))
        categories.add(r["category"])
