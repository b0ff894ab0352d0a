"""The evaluation stage: students and the voting baselines on the evaluated shapes.

Writes the students' per-point labels as ``{run}/predictions/`` (shape_id, category,
student, labels) and returns per-category mIoU of ``student``, ``voting`` (teacher votes,
uncovered points unlabelled) and ``voting_nearest`` (uncovered points take their nearest
covered point's label), with a Markdown table. Test labels are only *read here*, never
by training or checkpoint selection.
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa

from cluster.checkpoints import list_students, load_student
from cluster.storage import Storage
from distill.config import Config
from distill.metrics import MIoUTable
from distill.records import SHAPE_SCHEMA, UNIT_SCHEMA, KnowledgeUnits, Shape, table_to_shapes, table_to_units
from distill.training import predict
from distill.voting import vote, vote_nearest

log = logging.getLogger(__name__)

METHODS = ("voting", "voting_nearest", "student")


def voting_tables(shapes: list[Shape], units: dict[str, KnowledgeUnits]) -> dict[str, MIoUTable]:
    """mIoU of both voting baselines over the labelled ``shapes``."""
    tables = {"voting": MIoUTable(), "voting_nearest": MIoUTable()}
    for s in shapes:
        if s.labels is None:
            continue
        u = units.get(s.shape_id) or KnowledgeUnits.empty(s.shape_id)
        tables["voting"].add(s.shape_id, s.category, vote(u, s.num_points, s.num_parts), s.labels, s.num_parts)
        tables["voting_nearest"].add(
            s.shape_id, s.category, vote_nearest(u, s.points, s.num_parts), s.labels, s.num_parts
        )
    return tables


def markdown_table(tables: dict[str, MIoUTable]) -> str:
    """Per-category mIoU of each method, then the mean over categories and over shapes."""
    methods = [m for m in METHODS if m in tables and tables[m].per_shape] + [
        m for m in tables if m not in METHODS and tables[m].per_shape
    ]
    cats = sorted({c for m in methods for c in tables[m].per_category()})
    lines = ["| category | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    for c in cats:
        row = [tables[m].per_category().get(c) for m in methods]
        lines.append(f"| {c} | " + " | ".join("—" if v is None else f"{v:.1f}" for v in row) + " |")
    lines.append(
        "| **mean over categories** | " + " | ".join(f"**{tables[m].category_mean():.1f}**" for m in methods) + " |"
    )
    lines.append("| mean over shapes | " + " | ".join(f"{tables[m].shape_mean():.1f}" for m in methods) + " |")
    return "\n".join(lines)


def evaluate_students(
    cfg: Config, storage: Storage, shapes: list[Shape], predictions_dir: str | None = None
) -> tuple[MIoUTable, list[str]]:
    """Every finished student of the run predicts the shapes of its categories.

    Returns the student mIoU table (labelled shapes) and the categories no student knows.
    Writes the predictions when ``predictions_dir`` is given.
    """
    table, rows = MIoUTable(), {"shape_id": [], "category": [], "student": [], "labels": []}
    covered: set[str] = set()
    students = list_students(storage, cfg.run)
    if not students:
        raise FileNotFoundError(f"{storage.uri(cfg.run, 'checkpoints')}: no finished student; run jobs/train.py first")
    for name in students:
        model, space, _ = load_student(storage, cfg.run, name)
        mine = [s for s in shapes if s.category in space.categories]
        covered.update(s.category for s in mine)
        if not mine:
            continue
        preds = predict(model, mine, "cpu", cfg.train.batch_size, space)
        for s, pred in zip(mine, preds):
            rows["shape_id"].append(s.shape_id)
            rows["category"].append(s.category)
            rows["student"].append(name)
            rows["labels"].append(pred.astype("int32"))
            if s.labels is not None:
                table.add(s.shape_id, s.category, pred, s.labels, s.num_parts)
    if predictions_dir:
        storage.write_part(predictions_dir, pa.table(rows), done_ids=rows["shape_id"], name="part-predictions.parquet")
    unknown = sorted({s.category for s in shapes} - covered)
    if unknown:
        log.warning("no student was trained for categories %s: their shapes are not segmented", unknown)
    return table, unknown


def evaluate_run(cfg: Config, storage: Storage, shapes_dir: str, units_dir: str) -> dict[str, Any]:
    """Students and baselines on the shapes of ``shapes_dir`` with the teacher's ``units_dir``."""
    shapes = table_to_shapes(storage.read_table(shapes_dir, schema=SHAPE_SCHEMA))
    if not shapes:
        raise ValueError(f"{storage.uri(shapes_dir)}: no shapes to evaluate")
    units = table_to_units(storage.read_table(units_dir, schema=UNIT_SCHEMA))
    tables = voting_tables(shapes, units)
    tables["student"], unknown = evaluate_students(cfg, storage, shapes, f"{cfg.run}/predictions")
    md = markdown_table(tables)
    storage.write_bytes(f"{cfg.run}/evaluation.md", (md + "\n").encode())
    log.info("evaluation: %d shapes, table in %s", len(shapes), storage.uri(cfg.run, "evaluation.md"))
    summary: dict[str, Any] = {m: round(t.category_mean(), 2) for m, t in tables.items() if t.per_shape}
    summary["shape_mean"] = {m: round(t.shape_mean(), 2) for m, t in tables.items() if t.per_shape}
    summary["per_category"] = {m: t.summary()["per_category"] for m, t in tables.items() if t.per_shape}
    summary["evaluated_shapes"] = len(shapes)
    summary["unsegmented_categories"] = unknown
    summary["table"] = md
    return summary
