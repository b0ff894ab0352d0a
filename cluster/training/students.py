"""A run's students, in one home: what each one learns (``StudentPlan``, planned from the
tables' manifests), loading the finished ones (``load_students``) and what they predict
(``student_log_probs``, ``student_labels``). Training (``cluster.training.train``), re-scoring,
evaluation, relabelling and segmentation all ask here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from cluster.config import Config
from cluster.store.layout import PartItem, category_parts, plan_parts, shapes_manifest
from cluster.store.storage import Storage
from cluster.training.checkpoints import list_students, load_student, student_name
from cluster.training.samples import Tables, scores_dir
from distill.errors import NotFoundError
from distill.labels import LabelSpace
from distill.passes import predict_log_probs
from distill.pooling import pool_log_probs
from distill.records import Shape
from distill.superpoints import shape_superpoints

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is visible; use train.device=auto or cpu")
    return torch.device("cuda" if name in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


@dataclass
class StudentPlan:
    """One student to train: its name, label space and the parts of its categories."""

    name: str
    space: LabelSpace
    shapes_dir: str
    units_dir: str
    items: list[PartItem] = field(default_factory=list)
    with_units: int = 0
    untrained: tuple[str, ...] = ()
    """Categories of the space with no knowledge unit: the student learns nothing of them,
    and evaluation and segmentation report them as untrained instead of scoring them."""
    pool: bool = False
    """``train.superpoint_targets``: the fits read their units pooled within superpoints."""
    superpoints: bool = False
    """``train.superpoint_consistency`` > 0: the fits' samples carry their superpoints."""

    def tables(self, round: int, pooled: bool = True) -> Tables:
        """Where round ``round``'s fit reads: the shapes, round 0's units, the round's scores
        (``pooled=False``: the units as stored, what re-scoring reads and writes)."""
        scores = scores_dir(self.units_dir, self.name, round) if round else ""
        return Tables(self.shapes_dir, self.units_dir, scores, self.pool and pooled, self.superpoints and pooled)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "space": self.space.to_dict(),
            "shapes_dir": self.shapes_dir,
            "units_dir": self.units_dir,
            "items": [[i.shape_part, list(i.knowledge_parts), list(i.categories), i.with_units] for i in self.items],
            "with_units": self.with_units,
            "untrained": list(self.untrained),
            "pool": self.pool,
            "superpoints": self.superpoints,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StudentPlan:
        items = [PartItem(p, tuple(k), tuple(c), int(n)) for p, k, c, n in d["items"]]
        space = LabelSpace.from_dict(d["space"])
        untrained = tuple(d.get("untrained", ()))
        pool, superpoints = bool(d.get("pool", False)), bool(d.get("superpoints", False))
        return cls(
            d["name"], space, d["shapes_dir"], d["units_dir"], items, d["with_units"], untrained, pool, superpoints
        )


def plan_students(cfg: Config, storage: Storage, shapes_dir: str, units_dir: str) -> list[StudentPlan]:
    """The run's students, as ``train.per_category`` groups the categories, planned from
    the shape and knowledge manifests (one small read each)."""
    shapes = shapes_manifest(storage, shapes_dir)
    if not shapes:
        raise NotFoundError(f"{storage.uri(shapes_dir)} holds no shapes — run jobs/ingest.py (or extract) first")
    knowledge = storage.manifest(units_dir)
    if not knowledge:
        raise NotFoundError(f"{storage.uri(units_dir)} holds no knowledge units — run jobs/extract.py first")
    parts = category_parts(shapes, where=f"{storage.uri(shapes_dir)}: ")
    with_units: dict[str, int] = {}
    for meta in knowledge.values():
        for c, n in meta.get("with_units", {}).items():
            with_units[c] = with_units.get(c, 0) + int(n)
    untrained = [c for c in parts if not with_units.get(c)]
    if len(untrained) == len(parts):
        raise NotFoundError(
            f"{storage.uri(units_dir)}: no shape has a knowledge unit to learn from — check the teacher's "
            "output (teacher.score_threshold, the prompts) with jobs/extract.py"
        )
    if untrained:
        log.warning("no knowledge unit for %s: no student learns them; evaluation reports them untrained", untrained)
    groups = [[c] for c in parts if c not in untrained] if cfg.train.per_category else [list(parts)]
    plans = []
    for group in groups:
        space = LabelSpace(tuple(group), tuple(parts[c] for c in group))
        plan = plan_parts(shapes, knowledge, group, where=f"{storage.uri(units_dir)}: ")
        name = student_name(space, cfg.train.per_category)
        if cfg.train.fold >= 0:  # a cross-fitted student: its re-scoring rounds are its own
            name += f"-fold_{cfg.train.fold}"
        missing = tuple(c for c in group if c in untrained)
        pool, sp = cfg.train.superpoint_targets, cfg.train.superpoint_consistency > 0
        plans.append(StudentPlan(name, space, shapes_dir, units_dir, plan.items, plan.with_units, missing, pool, sp))
    return plans


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


def pooled(cfg: Config) -> bool:
    """Whether the student row is pooled over superpoints (``student.pool``)."""
    return cfg.student.pool == "superpoints"
