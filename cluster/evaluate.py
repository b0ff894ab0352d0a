"""The evaluation stage: students and the voting baselines on the evaluated shapes.

Streams the shape table one part at a time (with its co-partitioned knowledge): for each
part, ``PartEvaluator`` computes the voting baselines — ``voting`` (teacher votes,
uncovered points unlabelled) and ``voting_nearest`` (uncovered points take their nearest
covered point's label) — and every finished student's predictions of the shapes of its
categories (``student``) and, where the teacher's units of the part exist, the student
combined with them (``student_units``, ``distill.evidence``; ``eval.units_weight``),
writes those predictions as ``{run}/predictions/<shape part>``
(``distill.records.PREDICTION_SCHEMA``) and returns per-category sums of shape mIoU (``MIoUSums``),
never the predictions, to the driver. ``evaluate_local`` streams the parts in this
process; ``cluster.evaluate_ray.evaluate_on_ray`` through an actor pool that loads the
students once per actor (``cluster.pipeline`` picks). Test labels are only *read here*,
never by training or checkpoint selection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from cluster.checkpoints import list_students, load_student
from cluster.config import Config
from cluster.curves import write_curves_png
from cluster.layout import PartItem, plan_parts, shapes_manifest
from cluster.samples import EVAL_COLUMNS, Tables, load_units
from cluster.storage import Storage
from distill.errors import NotFoundError
from distill.evidence import combine, evidence_vote, unit_evidence
from distill.labels import LabelSpace
from distill.metrics import MIoUSums
from distill.passes import predict_log_probs
from distill.pooling import pool_log_probs
from distill.records import KnowledgeUnits, Prediction, Shape, predictions_to_table, row_to_shape
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

PartSums = tuple[dict[str, MIoUSums], set[str]]
"""What evaluating shape parts gives: per method its ``MIoUSums``, and the categories seen."""
EvaluateDriver = Callable[[Config, Storage, list[PartItem], Tables, bool, str], PartSums]
"""Evaluates items: ``(cfg, storage, items, tables, with_students, predictions_dir)`` →
``PartSums`` (``evaluate_local`` or ``cluster.evaluate_ray.evaluate_on_ray``)."""


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


@dataclass(frozen=True)
class UnitsPrior:
    """How ``student_units`` combines a student with a shape's units (``eval.units_weight``,
    ``eval.units_negative``; ``distill.evidence.combine``); weight 0: not scored."""

    weight: float = 0.0
    negative: float = 1.0

    @classmethod
    def from_config(cls, cfg: Config) -> UnitsPrior:
        return cls(cfg.eval.units_weight, cfg.eval.units_negative)

    def labels(self, log_probs: np.ndarray, units: KnowledgeUnits) -> np.ndarray:
        """The combined labels of one shape (no unit: the student's)."""
        return combine(log_probs, *unit_evidence(units, *log_probs.shape), self.weight, self.negative)


class PartEvaluator:
    """Evaluates one shape part at a time: ``(item) → {method: MIoUSums}`` plus the
    categories of its shapes; students loaded once (``students``: ``(name, model, space)``).
    With a ``units_prior`` the students' predictions combined with each shape's units are
    scored as ``student_units`` and written as the predictions of ``<student>+units``;
    ``pool``: the student row pooled over superpoints (``student.pool``)."""

    def __init__(
        self,
        storage: Storage,
        tables: Tables,
        students: list[Any],
        predictions_dir: str = "",
        batch_size: int = 8,
        units_prior: UnitsPrior = UnitsPrior(),
        pool: bool = False,
    ) -> None:
        self.storage, self.tables, self.students = storage, tables, students
        self.predictions_dir, self.batch_size, self.units_prior = predictions_dir, batch_size, units_prior
        self.pool = pool

    def __call__(self, item: PartItem) -> tuple[dict[str, MIoUSums], set[str]]:
        table = self.storage.read_part(
            self.tables.shapes_dir, item.shape_part, [*EVAL_COLUMNS, "superpoints"], optional=("superpoints",)
        )
        shapes = [row_to_shape(r) for r in table.to_pylist()]
        units, _ = load_units(self.storage, self.tables, item)
        sums = voting_tables(shapes, units, negative=self.units_prior.negative)
        sums["student"], sums["student_units"] = MIoUSums(), MIoUSums()
        preds: list[Prediction] = []
        for name, s, log_probs in student_log_probs(self.students, shapes, self.batch_size):
            labelled = [("student", name, student_labels(log_probs, s, self.pool))]
            if self.units_prior.weight > 0 and units:  # a part the teacher saw; its unseen shapes: the student's
                own = units.get(s.shape_id) or KnowledgeUnits.empty(s.shape_id)
                labelled.append(("student_units", f"{name}+units", self.units_prior.labels(log_probs, own)))
            for method, who, pred in labelled:
                preds.append(Prediction(s.shape_id, s.category, who, pred))
                if s.labels is not None:
                    sums[method].add(s.shape_id, s.category, pred, s.labels, s.num_parts)
        if self.predictions_dir:
            done = [p.shape_id for p in preds]
            self.storage.write_part(
                self.predictions_dir, predictions_to_table(preds), done_ids=done, name=item.shape_part
            )
        return sums, {s.category for s in shapes}


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


def require_students(storage: Storage, run: str) -> None:
    """Refuse, before any work, to evaluate a run that has no finished student."""
    if not list_students(storage, run):
        raise NotFoundError(
            f"{storage.uri(run, 'checkpoints')}: run {run!r} has no finished student — "
            "train one first (jobs/train.py, or jobs/pretrain.py for the whole pipeline)"
        )


@dataclass(frozen=True)
class LoadedStudent:
    """A finished student ready to predict: ``name`` is ``<run>/<student>`` (the
    ``student`` column of the predictions tables); ``trained``: the categories of its
    space it had knowledge units for (the only ones it segments)."""

    name: str
    model: torch.nn.Module
    space: LabelSpace
    trained: frozenset[str]


def load_students(storage: Storage, run: str) -> list[LoadedStudent]:
    """The finished students of ``run``."""
    out = []
    for name in list_students(storage, run):
        model, space, bundle = load_student(storage, run, name)
        trained = frozenset(space.categories) - set(bundle.get("untrained_categories", ()))
        out.append(LoadedStudent(f"{run}/{name}", model, space, trained))
    return out


def trained_categories(students: list[LoadedStudent]) -> set[str]:
    return {c for s in students for c in s.trained}


def student_log_probs(
    students: list[LoadedStudent], shapes: list[Shape], batch_size: int
) -> Iterator[tuple[str, Shape, np.ndarray]]:
    """Each student's log-probabilities over the parts of the ``shapes`` of the categories
    it was trained for → ``(student name, shape, (N, P) float32)``, student by student."""
    for st in students:
        mine = [s for s in shapes if s.category in st.trained]
        if mine:
            out = predict_log_probs(st.model, mine, "cpu", batch_size, st.space)
            yield from ((st.name, s, lp) for s, lp in zip(mine, out))


def student_labels(log_probs: np.ndarray, shape: Shape, pool: bool = False) -> np.ndarray:
    """The student's labels of one shape (N,) int64: the argmax per point, or with ``pool``
    (``student.pool=superpoints``) per superpoint (``distill.pooling.pool_log_probs``)."""
    if pool:
        return pool_log_probs(log_probs, shape_superpoints(shape), shape.shape_id)
    return log_probs.argmax(1).astype(np.int64)


def student_predictions(
    students: list[LoadedStudent], shapes: list[Shape], batch_size: int, pool: bool = False
) -> Iterator[tuple[str, Shape, np.ndarray]]:
    """Each student's predictions of the ``shapes`` of the categories it was trained for
    → ``(student name, shape, labels (N,) int64)``, student by student (``student_labels``)."""
    for name, s, log_probs in student_log_probs(students, shapes, batch_size):
        yield name, s, student_labels(log_probs, s, pool)


def plan_items(storage: Storage, shapes_dir: str, units_dir: str) -> list[PartItem]:
    """The evaluation's work: every shape part of ``shapes_dir`` with its knowledge parts
    (from the manifests; no row read)."""
    where = f"{storage.uri(units_dir)}: "
    return plan_parts(shapes_manifest(storage, shapes_dir), storage.manifest(units_dir), None, where).items


def pooled(cfg: Config) -> bool:
    """Whether the student row is pooled over superpoints (``student.pool``)."""
    return cfg.student.pool == "superpoints"


def empty_sums() -> dict[str, MIoUSums]:
    """One empty ``MIoUSums`` per method, for a driver to add the parts' sums to."""
    return {m: MIoUSums() for m in METHODS}


def evaluate_local(
    cfg: Config, storage: Storage, items: list[PartItem], tables: Tables, with_students: bool, predictions_dir: str
) -> PartSums:
    """Every item through one ``PartEvaluator`` in this process (an ``EvaluateDriver``)."""
    total = empty_sums()
    categories: set[str] = set()
    students = load_students(storage, cfg.run) if with_students else []
    evaluator = PartEvaluator(
        storage, tables, students, predictions_dir, cfg.train.batch_size, UnitsPrior.from_config(cfg), pooled(cfg)
    )
    for item in tqdm(items, desc="evaluate", unit="part", disable=not cfg.progress):
        sums, cats = evaluator(item)
        categories |= cats
        for m, t in sums.items():
            total[m].merge(t)
    return total, categories


def evaluate_parts(
    cfg: Config,
    storage: Storage,
    shapes_dir: str,
    units_dir: str,
    with_students: bool,
    predictions_dir: str = "",
    driver: EvaluateDriver = evaluate_local,
) -> PartSums:
    """Stream every shape part of ``shapes_dir`` through ``PartEvaluator`` with ``driver``."""
    items = plan_items(storage, shapes_dir, units_dir)
    return driver(cfg, storage, items, Tables(shapes_dir, units_dir), with_students, predictions_dir)


def baselines(
    cfg: Config, storage: Storage, shapes_dir: str, units_dir: str, driver: EvaluateDriver = evaluate_local
) -> dict[str, Any]:
    """The voting baselines' mIoU on the labelled shapes of ``shapes_dir`` (empty if none)."""
    sums, _ = evaluate_parts(cfg, storage, shapes_dir, units_dir, False, "", driver)
    return {m: t.summary() for m, t in sums.items() if not m.startswith("student") and len(t)}


def evaluate_run(
    cfg: Config, storage: Storage, shapes_dir: str, units_dir: str, driver: EvaluateDriver = evaluate_local
) -> dict[str, Any]:
    """Students and baselines on the shapes of ``shapes_dir`` with the teacher's ``units_dir``."""
    require_students(storage, cfg.run)
    tables, categories = evaluate_parts(cfg, storage, shapes_dir, units_dir, True, f"{cfg.run}/predictions", driver)
    if not categories:
        raise ValueError(f"{storage.uri(shapes_dir)}: no shapes to evaluate")
    unknown = sorted(categories - trained_categories(load_students(storage, cfg.run)))
    if unknown:
        log.warning("no student was trained for categories %s: their shapes are not segmented", unknown)
    md = markdown_table(tables) + "\n\n" + ROWS_NOTE
    if unknown:
        md += (
            f"\n\nstudent: untrained for {', '.join(unknown)} (no knowledge unit to learn from), "
            "shown as —; its means are over the other categories."
        )
    storage.write_bytes(f"{cfg.run}/evaluation.md", (md + "\n").encode())
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
