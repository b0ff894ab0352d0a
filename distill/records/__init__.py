"""The records that flow between stages, and their Parquet schemas (docs/design.md §2).

This package defines every table and every row a stage hands another; each module
documents its schemas column by column:

``shapes``       the shape table (``{run}/shapes/``): ``SHAPE_SCHEMA``, ``Shape``, ``Mesh``
``units``        the knowledge table (``{run}/knowledge/round_0/``): ``UNIT_SCHEMA``, ``KnowledgeUnits``
``predictions``  the predictions tables (``{run}/predictions/``, ``{run}/segment/labels/``):
                 ``PREDICTION_SCHEMA``, ``Prediction``
``rejects``      the rejects table (``{run}/rejects/``): ``REJECT_SCHEMA``
``views``        rendered shapes as batch columns (split extraction: render → teacher)
``scores``       backward distillation's round ≥ 1 score parts (``SCORE_SCHEMA``) and the
                 prepared training sample as an Arrow row (``SAMPLE_SCHEMA``)
``reports``      the small rows workers hand the driver: ``PIECE_SCHEMA``,
                 ``GENERATE_RESULT_SCHEMA``, ``RESCORE_RESULT_SCHEMA``, ``SUMS_SCHEMA``

Part manifests and footers are in ``cluster/layout.py``.
Pure numpy/pyarrow: no Ray.
"""

from distill.records.predictions import PREDICTION_SCHEMA, Prediction, predictions_to_table, table_to_predictions
from distill.records.rejects import REJECT_SCHEMA
from distill.records.reports import (
    GENERATE_RESULT_SCHEMA,
    PIECE_SCHEMA,
    RESCORE_RESULT_SCHEMA,
    SUMS_SCHEMA,
    add_sums,
    sums_to_table,
)
from distill.records.scores import SAMPLE_SCHEMA, SCORE_SCHEMA, scores_to_table, table_to_scores
from distill.records.shapes import (
    SHAPE_SCHEMA,
    Mesh,
    Shape,
    ShapeError,
    row_to_shape,
    shapes_to_table,
    table_to_shapes,
)
from distill.records.units import UNIT_SCHEMA, KnowledgeUnits, rows_to_units, table_to_units, units_to_table
from distill.records.views import (
    CAMERA_COLUMNS,
    RENDERED_COLUMNS,
    VIEW_COLUMNS,
    columns_to_views,
    empty_view_columns,
    shape_header,
    teacher_shape,
    views_to_columns,
)

__all__ = [
    "CAMERA_COLUMNS",
    "GENERATE_RESULT_SCHEMA",
    "PIECE_SCHEMA",
    "PREDICTION_SCHEMA",
    "REJECT_SCHEMA",
    "RESCORE_RESULT_SCHEMA",
    "SAMPLE_SCHEMA",
    "SCORE_SCHEMA",
    "RENDERED_COLUMNS",
    "SHAPE_SCHEMA",
    "SUMS_SCHEMA",
    "UNIT_SCHEMA",
    "VIEW_COLUMNS",
    "KnowledgeUnits",
    "Mesh",
    "Prediction",
    "Shape",
    "ShapeError",
    "add_sums",
    "columns_to_views",
    "empty_view_columns",
    "predictions_to_table",
    "row_to_shape",
    "scores_to_table",
    "rows_to_units",
    "shape_header",
    "shapes_to_table",
    "sums_to_table",
    "table_to_predictions",
    "table_to_scores",
    "table_to_shapes",
    "table_to_units",
    "teacher_shape",
    "units_to_table",
    "views_to_columns",
]
