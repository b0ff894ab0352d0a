"""The evaluation stage: students and the voting baselines on the evaluated shapes.

Streams the shape table one part at a time (with its co-partitioned knowledge): for each
part, ``PartEvaluator`` computes the voting baselines — ``voting`` (teacher votes,
uncovered points unlabelled) and ``voting_nearest`` (uncovered points take their nearest
covered point's label) — and every finished student's predictions of the shapes of its
categories (``student``) and, where the teacher's units of the part exist, the student
combined with them (``student_units``, ``distill.evidence``; ``eval.units_weight``),
writes those predictions as ``{run}/predictions/<shape part>``
(``distill.records.PREDICTION_SCHEMA``) and returns per-category sums of shape mIoU (``MIoUSums``),
never the predictions, to the driver. The parts go through ``cluster.passes.runner``: in this
process, or in a pool of ``cluster.eval_actors`` actors that load the students once
each (``EvaluateStage``). Test labels are only *read here*, never by training or
checkpoint selection.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa

from cluster.config import Config, config_from_dict, to_dict
from cluster.passes.runner import Pass, Step, run_pass
from cluster.runtime.resources import Pool
from cluster.store.layout import PartItem, plan_parts, shapes_manifest
from cluster.store.paths import RunPaths
from cluster.store.storage import Storage
from cluster.training.checkpoints import list_students
from cluster.training.curves import write_curves_png
from cluster.training.samples import EVAL_COLUMNS, Tables, load_units
from cluster.training.students import (
    LoadedStudent,
    load_students,
    pooled,
    require_students,
    student_labels,
    student_log_probs,
)
from distill.evidence import StudentWithUnits, evidence_vote
from distill.metrics import MIoUSums
from distill.records import (
    KnowledgeUnits,
    Prediction,
    Shape,
    add_sums,
    predictions_to_table,
    row_to_shape,
    sums_to_table,
)
from distill.superpoints import shape_superpoints, superpoint_vote_nearest
from distill.voting import vote, vote_nearest

log = logging.getLogger(__name__)

METHODS = ("voting", "voting_nearest", "voting_views", "voting_superpoints", "student", "student_units")
BASELINE_METHODS = METHODS[:4]
"""The teacher-only rows; ``voting_views`` is the vote with the units' evidence against
(``distill.evidence.evidence_vote``), what ``student_units`` adds to the student without
the student; ``voting_superpoints`` is PartSLIP's vote over geometric superpoints
(``distill.superpoints``), the paper's own baseline."""
STUDENT_METHODS = METHODS[4:]
"""``student`` needs no teacher on a scored shape; ``student_units`` needs its units."""

PartSums = tuple[dict[str, MIoUSums], set[str], set[str]]
"""What evaluating shape parts gives: per method its ``MIoUSums``, the categories seen,
and those of them no student was trained for."""


def baseline_predictions(shape: Shape, units: KnowledgeUnits, negative: float = 1.0) -> dict[str, np.ndarray]:
    """Each teacher-only row's labels (``BASELINE_METHODS``) of one shape from its units.
    negative: ``voting_views``'s λ. A shape stored without superpoints (a table written
    before the column) gets them computed here (``distill.superpoints.shape_superpoints``)."""
    return {
        "voting": vote(units, shape.num_points, shape.num_parts),
        "voting_nearest": vote_nearest(units, shape.points, shape.num_parts),
        "voting_views": evidence_vote(units, shape.points, shape.num_parts, negative),
        "voting_superpoints": superpoint_vote_nearest(units, shape.points, shape_superpoints(shape), shape.num_parts),
    }


def voting_tables(
    shapes: list[Shape], units: dict[str, KnowledgeUnits], tables: dict[str, Any] | None = None, negative: float = 1.0
) -> Any:
    """The voting baselines (``BASELINE_METHODS``) over the labelled ``shapes``, added to
    ``tables`` (default: new ``MIoUSums``) → the tables. negative: ``voting_views``'s λ."""
    tables = tables if tables is not None else {m: MIoUSums() for m in BASELINE_METHODS}
    for s in shapes:
        if s.labels is None:
            continue
        u = units.get(s.shape_id) or KnowledgeUnits.empty(s.shape_id)
        for m, pred in baseline_predictions(s, u, negative).items():
            tables[m].add(s.shape_id, s.category, pred, s.labels, s.num_parts)
    return tables


def markdown_table(tables: dict[str, Any]) -> str:
    """Per-category mIoU of each method, then the mean over categories and over shapes."""
    methods = [m for m in METHODS if m in tables and len(tables[m])] + [
        m for m in tables if m not in METHODS and len(tables[m])
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


class PartEvaluator:
    """Evaluates one shape part at a time: ``(item) → ({method: MIoUSums}, the categories
    of its shapes, those no student knows)``; students loaded once. With ``with_units``
    on, the students' predictions combined with each shape's units are scored as
    ``student_units`` and written as the predictions of ``<student>+units``; ``pool``:
    the student row pooled over superpoints (``student.pool``)."""

    def __init__(
        self,
        storage: Storage,
        tables: Tables,
        students: list[LoadedStudent],
        predictions_dir: str = "",
        batch_size: int = 8,
        with_units: StudentWithUnits | None = None,
        pool: bool = False,
    ) -> None:
        self.storage, self.tables, self.students = storage, tables, students
        self.predictions_dir, self.batch_size = predictions_dir, batch_size
        self.with_units = with_units or StudentWithUnits()
        self.pool = pool
        self.trained = {c for s in students for c in s.trained}

    def __call__(self, item: PartItem) -> PartSums:
        table = self.storage.read_part(
            self.tables.shapes_dir, item.shape_part, [*EVAL_COLUMNS, "superpoints"], optional=("superpoints",)
        )
        shapes = [row_to_shape(r) for r in table.to_pylist()]
        units, _ = load_units(self.storage, self.tables, item)
        sums = voting_tables(shapes, units, negative=self.with_units.negative)
        sums["student"], sums["student_units"] = MIoUSums(), MIoUSums()
        preds: list[Prediction] = []
        for name, s, log_probs in student_log_probs(self.students, shapes, self.batch_size):
            labelled = [("student", name, student_labels(log_probs, s, self.pool))]
            if self.with_units.weight > 0 and units:  # a part the teacher saw; its unseen shapes: the student's
                own = units.get(s.shape_id) or KnowledgeUnits.empty(s.shape_id)
                labelled.append(("student_units", f"{name}+units", self.with_units.labels(log_probs, own)))
            for method, who, pred in labelled:
                preds.append(Prediction(s.shape_id, s.category, who, pred))
                if s.labels is not None:
                    sums[method].add(s.shape_id, s.category, pred, s.labels, s.num_parts)
        if self.predictions_dir:
            done = [p.shape_id for p in preds]
            self.storage.write_part(
                self.predictions_dir, predictions_to_table(preds), done_ids=done, name=item.shape_part
            )
        categories = {s.category for s in shapes}
        return sums, categories, categories - self.trained if self.students else set()


class EvaluateStage:
    """The evaluation pass's step: the run's students loaded once (per actor on Ray); per
    item, its ``PartEvaluator`` sums as ``distill.records.SUMS_SCHEMA`` rows."""

    def __init__(
        self, config: dict[str, Any], storage: Storage, tables: Tables, with_students: bool, predictions_dir: str
    ) -> None:
        cfg = config_from_dict(config)
        students = load_students(storage, cfg.run) if with_students else []
        self.evaluate = PartEvaluator(
            storage,
            tables,
            students,
            predictions_dir,
            cfg.train.batch_size,
            StudentWithUnits.of(cfg.eval),
            pooled(cfg),
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        out = []
        for i in range(len(batch["shape_part"])):
            out.append(sums_to_table(*self.evaluate(PartItem.from_row({k: batch[k][i] for k in batch}))))
        return pa.concat_tables(out)


ROWS_NOTE = (
    "Teacher-only rows (voting, voting_nearest, voting_views, voting_superpoints) and student_units need the "
    "teacher run on each scored shape; student is the student alone, what a new shape gets without the teacher."
)


def best_teacher_summary(means: dict[str, Any]) -> dict[str, Any]:
    """The bar every student row is held to: the teacher-only row with the highest mean
    over categories, and each student row's lead over it (empty without both)."""
    teachers = [m for m in BASELINE_METHODS if m in means]
    if not teachers:
        return {}
    best = max(teachers, key=lambda m: means[m])
    out: dict[str, Any] = {"best_teacher": {"name": best, "mean": means[best]}}
    leads = {m: round(means[m] - means[best], 2) for m in STUDENT_METHODS if m in means}
    if leads:
        out["lead_best"] = leads
    return out


def plan_items(storage: Storage, shapes_dir: str, units_dir: str) -> list[PartItem]:
    """The evaluation's work: every shape part of ``shapes_dir`` with its knowledge parts
    (from the manifests; no row read)."""
    where = f"{storage.uri(units_dir)}: "
    return plan_parts(shapes_manifest(storage, shapes_dir), storage.manifest(units_dir), None, where).items


def empty_sums() -> dict[str, MIoUSums]:
    """One empty ``MIoUSums`` per method, for a driver to add the parts' sums to."""
    return {m: MIoUSums() for m in METHODS}


def evaluate_parts(
    cfg: Config, storage: Storage, shapes_dir: str, units_dir: str, with_students: bool, predictions_dir: str = ""
) -> PartSums:
    """Stream every shape part of ``shapes_dir`` through ``PartEvaluator`` (``cluster.passes.runner``).
    Every part is evaluated again on a re-run: its sums depend on the settings (``eval.*``)."""
    items = plan_items(storage, shapes_dir, units_dir)
    kwargs = {"config": to_dict(cfg), "storage": storage, "tables": Tables(shapes_dir, units_dir)}
    kwargs |= {"with_students": with_students, "predictions_dir": predictions_dir}
    step = Step(EvaluateStage, kwargs, Pool(size=cfg.cluster.eval_actors))
    result = run_pass(cfg, Pass("evaluate", (step,)), (i.to_row() for i in items))
    total, categories, untrained = empty_sums(), set(), set()
    add_sums(result.rows, total, categories, untrained)
    return total, categories, untrained


def baselines(cfg: Config, storage: Storage, shapes_dir: str, units_dir: str) -> dict[str, Any]:
    """The voting baselines' mIoU on the labelled shapes of ``shapes_dir`` (empty if none)."""
    sums, _, _ = evaluate_parts(cfg, storage, shapes_dir, units_dir, False, "")
    return {m: t.summary() for m, t in sums.items() if not m.startswith("student") and len(t)}


def evaluate_run(cfg: Config, storage: Storage, shapes_dir: str, units_dir: str) -> dict[str, Any]:
    """Students and baselines on the shapes of ``shapes_dir`` with the teacher's ``units_dir``
    (each student loaded once, by the pass's workers)."""
    require_students(storage, cfg.run)
    predictions = RunPaths(cfg.run).predictions
    tables, categories, untrained = evaluate_parts(cfg, storage, shapes_dir, units_dir, True, predictions)
    if not categories:
        raise ValueError(f"{storage.uri(shapes_dir)}: no shapes to evaluate")
    unknown = sorted(untrained)
    if unknown:
        log.warning("no student was trained for categories %s: their shapes are not segmented", unknown)
    md = markdown_table(tables) + "\n\n" + ROWS_NOTE
    if unknown:
        md += (
            f"\n\nstudent: untrained for {', '.join(unknown)} (no knowledge unit to learn from), "
            "shown as —; its means are over the other categories."
        )
    storage.write_bytes(RunPaths(cfg.run).evaluation_md, (md + "\n").encode())
    curves = write_curves_png(storage, cfg.run, list_students(storage, cfg.run))
    evaluated = max(len(t) for t in tables.values())
    log.info("evaluation: %d shapes, table in %s", evaluated, storage.uri(cfg.run, "evaluation.md"))
    summary: dict[str, Any] = {m: round(t.category_mean(), 2) for m, t in tables.items() if len(t)}
    summary.update(best_teacher_summary(summary))
    summary["shape_mean"] = {m: round(t.shape_mean(), 2) for m, t in tables.items() if len(t)}
    summary["per_category"] = {m: t.summary()["per_category"] for m, t in tables.items() if len(t)}
    summary["evaluated_shapes"] = evaluated
    summary["unsegmented_categories"] = unknown
    summary["table"] = md
    summary["curves"] = None if curves is None else storage.uri(curves)
    return summary
