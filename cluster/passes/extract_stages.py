"""The steps of the extraction pass (``cluster.passes.extract`` chains them through ``cluster.passes.runner``).

*fused* layout: ``ExtractStage``, one actor stage that runs ``PartExtractor`` (read,
render, teach, back-project, write) on each shape part where it is.

*split* layout: ``render_part`` CPU tasks render a part's unfinished shapes, one batch a
shape (``render_rows``: ``distill.records.views``' rendered-shape columns); ``TeachStage``
actors teach and back-project them and write each batch's units as knowledge pieces of
the parts they came from.

Both hand the driver ``PIECE_SCHEMA`` rows only, and reject a shape whose render or
teacher raises with its reason while the rest go on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from cluster.passes.extract_parts import (
    PartExtractor,
    Result,
    TeacherFactory,
    default_factory,
    done_in_part,
    reason,
    write_piece,
)
from cluster.store.storage import Storage
from distill.config import RenderConfig, TeacherConfig
from distill.extract import render, teach, to_units
from distill.records import (
    CAMERA_COLUMNS,
    PIECE_SCHEMA,
    VIEW_COLUMNS,
    columns_to_views,
    empty_view_columns,
    row_to_shape,
    shape_header,
    teacher_shape,
    views_to_columns,
)


def _stack(values: list[np.ndarray]) -> np.ndarray:
    """Rows → one batch column: stacked when shapes agree, else an object array of
    arrays (Ray Data stores it as a variable-shaped tensor column)."""
    if len(values) == 1:  # the usual one-shape batch: a view, not a copy of ~60 MB
        return values[0][None]
    if all(v.shape == values[0].shape for v in values):
        return np.stack(values)
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


# -- split layout, stage 1: render (CPU tasks) ------------------------------------------
def render_rows(rows: list[dict[str, Any]], render_cfg: RenderConfig) -> dict[str, np.ndarray]:
    """Shape-table rows → one batch: shape_id, header (JSON), points (N,3), error ("" when
    rendered) and the view columns of ``views_to_columns``."""
    out: dict[str, list[Any]] = {k: [] for k in ("shape_id", "header", "points", "error")}
    cols: list[dict[str, np.ndarray]] = []
    for row in rows:
        shape_id = str(row.get("shape_id"))
        try:
            shape = row_to_shape(row)
            views = render(shape, render_cfg)
            cols.append(views_to_columns(views))
            out["header"].append(shape_header(shape))
            out["points"].append(shape.points)
            out["error"].append("")
        except Exception as e:  # noqa: BLE001 - any failure of one shape rejects that shape only
            n = int(row.get("num_points") or 0)
            cols.append(empty_view_columns(render_cfg.image_size, n))
            out["header"].append("{}")
            out["points"].append(np.zeros((n, 3), np.float32))
            out["error"].append(f"render: {reason(e)}")
        out["shape_id"].append(shape_id)
    batch = {
        "shape_id": np.array(out["shape_id"], dtype=object),
        "header": np.array(out["header"], dtype=object),
        "error": np.array(out["error"], dtype=object),
        "points": _stack(out["points"]),
    }
    for k in VIEW_COLUMNS + CAMERA_COLUMNS:
        batch[k] = _stack([c[k] for c in cols])
    return batch


def render_part(
    batch: dict[str, np.ndarray], storage: Storage, shapes_dir: str, knowledge_dir: str, render_cfg: RenderConfig
) -> Iterator[dict[str, np.ndarray]]:
    """``map_batches`` generator of the render stage: one shape part in (``part``), each of
    its unfinished shapes rendered out as one batch (``render_rows``, plus ``part`` and
    ``category``), so a task holds one shape's views at a time (~60 MB at 800²)."""
    (part,) = [str(p) for p in batch["part"]]
    done = done_in_part(storage, knowledge_dir, part)
    table = storage.read_part(shapes_dir, part)
    for i in range(table.num_rows):
        row = table.slice(i, 1).to_pylist()[0]
        if str(row["shape_id"]) in done:
            continue
        out = render_rows([row], render_cfg)
        out["part"] = np.array([part], dtype=object)
        out["category"] = np.array([str(row.get("category"))], dtype=object)
        yield out


# -- split layout, stage 2: teacher + back-projection (actor pool) -----------------------
class TeachStage:
    """Ray Data callable class: the teacher, loaded once per actor; per batch of rendered
    shapes their predictions and back-projected units, written as knowledge pieces of the
    parts they came from → ``PIECE_SCHEMA`` rows."""

    def __init__(
        self,
        teacher_cfg: TeacherConfig,
        seed: int,
        storage: Storage,
        run: str,
        knowledge_dir: str,
        teacher_factory: TeacherFactory | None = None,
    ) -> None:
        self.teacher = (teacher_factory or default_factory)(teacher_cfg, seed)
        self.storage, self.run, self.knowledge_dir = storage, run, knowledge_dir

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        by_part: dict[str, list[Result]] = {}
        for i in range(len(batch.get("shape_id", []))):
            sid, error, category = str(batch["shape_id"][i]), str(batch["error"][i]), str(batch["category"][i])
            result: Result = (sid, None, error, category)
            if not error:
                try:
                    views = columns_to_views({k: batch[k][i] for k in VIEW_COLUMNS + CAMERA_COLUMNS})
                    shape = teacher_shape(str(batch["header"][i]), batch["points"][i])
                    preds = teach(self.teacher, views, shape)
                    result = (sid, to_units(views, preds, shape, self.teacher), "", category)
                except Exception as e:  # noqa: BLE001 - one shape's failure rejects that shape only
                    result = (sid, None, f"teacher: {reason(e)}", category)
            by_part.setdefault(str(batch["part"][i]), []).append(result)
        rows = [write_piece(self.storage, self.run, self.knowledge_dir, part, res) for part, res in by_part.items()]
        return pa.Table.from_pylist([r for r in rows if r is not None], schema=PIECE_SCHEMA)


# -- fused layout ------------------------------------------------------------------------
class ExtractStage:
    """Ray Data callable class of the fused layout: per shape part, ``PartExtractor`` (read,
    render, teach, back-project, write) in this actor; the teacher is loaded once."""

    def __init__(
        self,
        teacher_cfg: TeacherConfig,
        seed: int,
        storage: Storage,
        run: str,
        shapes_dir: str,
        knowledge_dir: str,
        render_cfg: RenderConfig,
        teacher_factory: TeacherFactory | None = None,
    ) -> None:
        teacher = (teacher_factory or default_factory)(teacher_cfg, seed)
        self.extract = PartExtractor(storage, run, shapes_dir, knowledge_dir, render_cfg, teacher)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        rows = [row for part in batch["part"] for row in self.extract(str(part))]
        return pa.Table.from_pylist(rows, schema=PIECE_SCHEMA)
