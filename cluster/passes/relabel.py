"""Self-training (``train.relabel_rounds``): each relabel round's students relabel every
distillation shape, and the next round's students learn from those labels.

Backward distillation (``train.bd_rounds``) and self-training are both rounds of the
student teaching the teacher's knowledge back: a *re-score round* re-weights the teacher's
units inside one student's fit (``cluster.passes.rescore``); a *relabel round* replaces them
with the student's dense labels for a fresh student (here).

Round 0 learns from the teacher's units (``knowledge/round_0``). A relabel pass then
labels every point of every distillation shape that has units with ``student_units``:
the students' log-probabilities plus the shape's own teacher units as evidence
(``distill.evidence``, the same ``eval.units_weight`` and ``eval.units_negative`` that
evaluation uses). It writes one unit per (shape, part) with score 1 as
``{run}/knowledge/relabel_{r}/<knowledge part>``, under round 0's part names and in
UNIT_SCHEMA, so the training stage reads it like any knowledge table. Round r trains a
fresh student on that table. Every point carries a label, also the points no view saw.

Rounds before the last train as the run ``{run}/relabel/round_{r}`` inside the run's
folder (checkpoints, curves; ``cluster.store.paths``); the last round is the run's own student,
the one evaluation and segmentation use. A written part is never redone, so a stopped pass resumes where it was.

The pass handles one item (a shape part and its knowledge parts) at a time
(``Relabeller``) through ``cluster.passes.runner``: in this process, or in a pool of
``cluster.eval_actors`` actors that load the students once each (``RelabelStage``), as
the evaluation does. It costs about what evaluation costs: one forward pass a shape.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np

from cluster.config import Config, config_from_dict, to_dict
from cluster.passes.runner import Pass, Step, run_pass
from cluster.runtime.resources import Pool
from cluster.store.layout import PartItem
from cluster.store.paths import RunPaths
from cluster.store.storage import Storage
from cluster.training.samples import SHAPE_COLUMNS
from cluster.training.students import LoadedStudent, load_students, student_log_probs
from distill.evidence import StudentWithUnits
from distill.records import KnowledgeUnits, Shape, row_to_shape, table_to_units, units_to_table
from distill.sources import fold_of

log = logging.getLogger(__name__)

TEACHER = "relabel"
"""The ``teacher`` column of relabelled units."""


def relabel_dir(run: str, round: int) -> str:
    """The knowledge table relabel round ``round`` learns from (≥ 1)."""
    return RunPaths(run).relabelled(round)


def round_run(cfg: Config, round: int, fold: int = -1) -> str:
    """Where relabel round ``round``'s students live: the run itself for the last one, an
    earlier one's in ``{run}/relabel/round_{round}`` (a cross-fitted student,
    ``train.relabel_folds`` > 1, in its fold's)."""
    if round >= cfg.train.relabel_rounds:
        return cfg.run
    return RunPaths(cfg.run).relabel_round(round, fold).run


def round_folds(cfg: Config, round: int) -> list[int]:
    """The folds whose students round ``round`` trains: [−1] (one student on
    every shape) for the last round or without cross-fitting, else 0..K−1."""
    if round >= cfg.train.relabel_rounds or cfg.train.relabel_folds < 2:
        return [-1]
    return list(range(cfg.train.relabel_folds))


def round_config(cfg: Config, round: int, fold: int = -1) -> Config:
    """``cfg`` with ``run`` set to the round's (``round_run``) and, for a
    cross-fitted student, the fold it holds out (``train.fold``)."""
    return replace(cfg, run=round_run(cfg, round, fold), train=replace(cfg.train, fold=fold))


def dense_units(shape_id: str, labels: np.ndarray, num_parts: int, round: int) -> KnowledgeUnits:
    """One unit per part present in ``labels`` (N,): its points, score 1, view −1 (no view)."""
    sets = [np.nonzero(labels == c)[0] for c in range(num_parts)]
    present = [c for c in range(num_parts) if len(sets[c])]
    return KnowledgeUnits.from_lists(
        shape_id, [-1] * len(present), present, [1.0] * len(present), [sets[c] for c in present], TEACHER, round
    )


class Relabeller:
    """Relabels one item (a shape part and its knowledge parts) with students and the
    teacher's units of ``units_dir``, writing each knowledge part's relabelled twin.
    students_by_fold: per fold, the students that never saw that fold's units (one list:
    no cross-fitting, every shape by every student of its category)."""

    def __init__(
        self,
        storage: Storage,
        shapes_dir: str,
        units_dir: str,
        out_dir: str,
        students_by_fold: list[list[LoadedStudent]],
        with_units: StudentWithUnits,
        round: int,
        batch_size: int = 8,
        seed: int = 0,
    ) -> None:
        if with_units.weight <= 0:
            raise ValueError("train.relabel_rounds needs eval.units_weight > 0: the relabelling is student_units")
        self.storage, self.shapes_dir, self.units_dir, self.out_dir = storage, shapes_dir, units_dir, out_dir
        self.with_units, self.round, self.batch_size, self.seed = with_units, round, batch_size, seed
        self.by_fold = students_by_fold
        self.in_sample = 0

    def __call__(self, item: PartItem) -> dict[str, int]:
        todo = [k for k in item.knowledge_parts if not self.storage.exists(self.out_dir, k)]
        if not todo:
            return {"parts": 0, "shapes": 0, "in_sample": 0}
        table = self.storage.read_part(self.shapes_dir, item.shape_part, SHAPE_COLUMNS)
        shapes = {r["shape_id"]: row_to_shape(r) for r in table.to_pylist()}
        shapes_done = self.in_sample = 0
        for part in todo:
            teacher = table_to_units(self.storage.read_part(self.units_dir, part))
            done_ids, summary = self.storage.part_footer(self.units_dir, part)
            mine = [shapes[i] for i in teacher if i in shapes and len(teacher[i])]
            new: list[KnowledgeUnits] = []
            with_units: dict[str, int] = {}
            for _, s, log_probs in self._log_probs(mine):
                labels = self.with_units.labels(log_probs, teacher[s.shape_id])
                new.append(dense_units(s.shape_id, labels, log_probs.shape[1], self.round))
                with_units[s.category] = with_units.get(s.category, 0) + 1
            out = units_to_table(new)
            facts = {"shape_part": summary.get("shape_part", item.shape_part), "units": out.num_rows}
            facts["with_units"] = dict(sorted(with_units.items()))
            self.storage.write_part(self.out_dir, out, done_ids=done_ids, name=part, summary=facts)
            shapes_done += len(new)
        return {"parts": len(todo), "shapes": shapes_done, "in_sample": self.in_sample}

    def _log_probs(self, shapes: list[Shape]) -> Iterator[tuple[str, Shape, np.ndarray]]:
        """Each shape's log-probabilities by the students of its fold (all: one fold). A
        cross-fitted shape whose fold's students never learnt its category (every shape of
        it fell in that fold) is relabelled in-sample by a student of another fold that
        did: a recorded fallback (``in_sample`` in the summary, and a warning), never a
        shape left out."""
        folds = len(self.by_fold)
        for f, students in enumerate(self.by_fold):
            mine = [s for s in shapes if folds == 1 or fold_of(s.shape_id, self.seed, folds) == f]
            known = {c for st in students for c in st.trained}
            orphans = [s for s in mine if s.category not in known]
            yield from student_log_probs(students, [s for s in mine if s.category in known], self.batch_size)
            for s in orphans:
                others = [st for g, sts in enumerate(self.by_fold) if g != f for st in sts if s.category in st.trained]
                if others:
                    log.warning(
                        "relabel: fold %d has no student of %s; %s relabelled in-sample", f, s.category, s.shape_id
                    )
                    self.in_sample += 1
                    yield from student_log_probs(others[:1], [s], self.batch_size)


def relabeller(cfg: Config, storage: Storage, shapes_dir: str, units_dir: str, round: int) -> Relabeller:
    """The relabeller of round ``round`` (≥ 1): round − 1's students loaded
    (cross-fitted: one list per fold, the students that held that fold out)."""
    by_fold = []
    for fold in round_folds(cfg, round - 1):
        run = round_run(cfg, round - 1, fold)
        students = load_students(storage, run)
        if not students:
            raise FileNotFoundError(f"{storage.uri(run)}: no finished student of round {round - 1} to relabel with")
        by_fold.append(students)
    out_dir = relabel_dir(cfg.run, round)
    with_units = StudentWithUnits.of(cfg.eval)
    return Relabeller(
        storage, shapes_dir, units_dir, out_dir, by_fold, with_units, round, cfg.train.batch_size, cfg.seed
    )


class RelabelStage:
    """The relabel pass's step: one ``Relabeller`` (per actor on Ray); per item, the counts
    written (``parts``, ``shapes``, ``in_sample``)."""

    def __init__(self, config: dict[str, Any], storage: Storage, shapes_dir: str, units_dir: str, round: int) -> None:
        self.relabel = relabeller(config_from_dict(config), storage, shapes_dir, units_dir, round)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        counts = [
            self.relabel(PartItem.from_row({k: batch[k][i] for k in batch})) for i in range(len(batch["shape_part"]))
        ]
        return {k: np.array([c[k] for c in counts], np.int64) for k in ("parts", "shapes", "in_sample")}


def relabel(
    cfg: Config,
    storage: Storage,
    items: list[PartItem],
    shapes_dir: str,
    units_dir: str,
    round: int,
) -> dict[str, Any]:
    """Round ``round``'s knowledge (≥ 1) from round − 1's students and the
    teacher's ``units_dir``, over the items not written yet → a summary (parts written,
    skipped, shapes relabelled)."""
    out_dir = relabel_dir(cfg.run, round)
    written = set(storage.list_parts(out_dir))
    kwargs = {"config": to_dict(cfg), "storage": storage, "shapes_dir": shapes_dir, "units_dir": units_dir}
    kwargs["round"] = round
    relabelled = Pass(
        f"relabel {round}",
        (Step(RelabelStage, kwargs, Pool(size=cfg.cluster.eval_actors)),),
        finished=lambda row: all(k in written for k in PartItem.from_row(row).knowledge_parts),
    )
    result = run_pass(cfg, relabelled, (i.to_row() for i in items))
    total = {k: sum(int(r[k]) for r in result.rows) for k in ("parts", "shapes", "in_sample")}
    skipped = sum(len(i.knowledge_parts) for i in items) - total["parts"]
    log.info("relabel %d: %d parts written (%d skipped), %d shapes", round, total["parts"], skipped, total["shapes"])
    return {
        **total,
        "skipped_parts": skipped,
        "table": storage.uri(out_dir),
        "seconds": float(f"{result.seconds:.1f}"),  # `round` is the relabel round here
    }
