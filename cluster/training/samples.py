"""Training samples streamed from storage, one shape part at a time.

``load_item`` joins a shape part with its knowledge parts (co-partitioned, ``cluster.store.layout``)
and, past round 0, with the round's score parts, and prepares the samples of one
student's label space exactly as training does (same resampling, same seed). Every stage
that needs samples — training in this process, Ray Data's training ingest, re-scoring,
evaluation — calls it on one item at a time, so memory is bounded by a part.

``samples_to_table`` / ``table_to_batch`` carry prepared samples through Ray Data as Arrow
rows (one row a shape). ``PartSource`` is ``distil``'s streaming source in one process.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from cluster.store.layout import PartItem
from cluster.store.storage import Storage
from distill.errors import NotFoundError
from distill.labels import LabelSpace
from distill.pooling import pool_units
from distill.records import SAMPLE_SCHEMA, KnowledgeUnits, row_to_shape, table_to_scores, table_to_units
from distill.samples import Batch, ShapeSample, collate, mix_seed, prepare_sample
from distill.sources import (
    CALIBRATION_SHAPES,
    CLASS_COUNT_SHAPES,
    REFERENCE_SHAPES,
    VALIDATION_SHAPES,
    SampleSource,
    category_quota,
    in_validation,
    stratified,
    stratified_chunks,
    trains_on,
)
from distill.superpoints import shape_superpoints

SHAPE_COLUMNS = ["shape_id", "category", "part_names", "num_points", "points", "normals", "source", "meta"]
"""What training reads of a shape part: no mesh, no labels (meshes are for rendering and
pictures; labels for evaluation only)."""
EVAL_COLUMNS = [*SHAPE_COLUMNS, "labels"]

BALANCE_FILE = "_balance.json"
"""A ``_balanced`` rule's round: ``{"rule", "factors": {category: [factor per part]}}``; the
score parts hold the rule's own scores and a unit's score in training is
min(1, score · factor of its (category, part)) (``distill.rescore.balance_part_mass``)."""


@dataclass(frozen=True)
class Tables:
    """Where one student's data lives: the shape table, round 0's knowledge and the
    folder of the current round's scores (empty in round 0)."""

    shapes_dir: str
    units_dir: str
    scores_dir: str = ""
    pool: bool = False
    """Training targets pooled within superpoints (``train.superpoint_targets``,
    ``distill.pooling.pool_units``); re-scoring reads the units as stored."""
    superpoints: bool = False
    """The samples carry their superpoints (``train.superpoint_consistency``)."""


def scores_dir(units_dir: str, student: str, round: int) -> str:
    """Round ``round``'s score folder of ``student`` beside round 0's ``units_dir``."""
    if round < 1:
        raise ValueError(f"round={round}: round 0 keeps the teacher's scores in the knowledge itself")
    return posixpath.join(posixpath.dirname(units_dir.rstrip("/")), f"round_{round}", student)


def read_score_part(
    storage: Storage, scores_dir_: str, knowledge_part: str
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A score part (same name as its knowledge part) → (``{shape id: (K,) float32}``,
    ``{shape id: (M,) float32}`` relative pair weights of the shapes that have them)."""
    return table_to_scores(storage.read_part(scores_dir_, knowledge_part))


def read_scores(storage: Storage, scores_dir_: str, knowledge_part: str) -> dict[str, np.ndarray]:
    """A score part → ``{shape id: (K,) float32}`` (the rule's own scores)."""
    return read_score_part(storage, scores_dir_, knowledge_part)[0]


_BALANCE: dict[str, dict[str, np.ndarray] | None] = {}


def write_balance(storage: Storage, scores_dir_: str, rule: str, factors: dict[str, list[float]]) -> None:
    """Write a round's factor table (``BALANCE_FILE``) and forget any cached read of it."""
    storage.write_json(posixpath.join(scores_dir_, BALANCE_FILE), {"rule": rule, "factors": factors})
    _BALANCE.pop(storage.uri(scores_dir_, BALANCE_FILE), None)


def read_balance(storage: Storage, scores_dir_: str) -> dict[str, np.ndarray] | None:
    """A round's per-part factors (``BALANCE_FILE``) or None (not a ``_balanced`` rule).

    Read once per process and folder: written once at the end of its pass, and a rebuilt
    pass writes the same factors (same snapshot, same scores)."""
    key = storage.uri(scores_dir_, BALANCE_FILE)
    if key not in _BALANCE:
        path = posixpath.join(scores_dir_, BALANCE_FILE)
        found = storage.read_json(path) if storage.exists(path) else None
        _BALANCE[key] = None if found is None else {c: np.asarray(f, np.float64) for c, f in found["factors"].items()}
    return _BALANCE[key]


def balanced_score(units: KnowledgeUnits, category: str, factors: dict[str, np.ndarray]) -> np.ndarray:
    """A unit's training score under a ``_balanced`` round: min(1, score · its part's factor)."""
    factor = factors.get(category)
    if factor is None or (len(units) and int(units.label.max()) >= len(factor)):
        raise ValueError(f"the round's balance factors have no entry for the parts of {category} ({units.shape_id})")
    return np.clip(units.score * factor[units.label], 0.0, 1.0).astype(np.float32)


def load_units(
    storage: Storage, tables: Tables, item: PartItem
) -> tuple[dict[str, KnowledgeUnits], dict[str, np.ndarray]]:
    """The units of an item's shapes, with the current round's scores when past round 0,
    and the round's relative pair weights by shape id (a point-level rule; else empty)."""
    units: dict[str, KnowledgeUnits] = {}
    pair_weights: dict[str, np.ndarray] = {}
    for part in item.knowledge_parts:
        mine = table_to_units(storage.read_part(tables.units_dir, part))
        if tables.scores_dir:
            scores, pairs = read_score_part(storage, tables.scores_dir, part)
            for sid, u in mine.items():
                new = scores.get(sid)
                pw = pairs.get(sid)
                if new is None or len(new) != len(u) or (pw is not None and len(pw) != len(u.point_idx)):
                    got = "missing" if new is None else f"{len(new)} scores, {'no' if pw is None else len(pw)} pairs"
                    raise ValueError(
                        f"{storage.uri(tables.scores_dir, part)}: scores of {sid} do not match its {len(u)} units "
                        f"and {len(u.point_idx)} pairs ({got}); delete this part: the next run rebuilds it"
                    )
                mine[sid] = u.with_scores(new, u.round + 1)
                if pw is not None:
                    pair_weights[sid] = pw
        units.update(mine)
    return units, pair_weights


def load_item(
    storage: Storage,
    tables: Tables,
    item: PartItem,
    space: LabelSpace,
    num_points: int | None,
    seed: int,
    labels: bool = False,
) -> list[ShapeSample]:
    """The samples of one item's shapes in ``space``'s categories, in table order.

    labels: read the ground truth too (evaluation only; training never does)."""
    columns = EVAL_COLUMNS if labels else SHAPE_COLUMNS
    if tables.pool or tables.superpoints:
        columns = [*columns, "superpoints"]
    table = storage.read_part(tables.shapes_dir, item.shape_part, columns, optional=("superpoints",))
    units, pairs = load_units(storage, tables, item)
    factors = read_balance(storage, tables.scores_dir) if tables.scores_dir else None
    out = []
    for row in table.to_pylist():
        if row["category"] not in space.categories:
            continue
        shape = row_to_shape(row)
        u = units.get(shape.shape_id)
        if u is not None and factors is not None:
            u = u.with_scores(balanced_score(u, shape.category, factors), u.round)
        pair_weight = pairs.get(shape.shape_id)
        # Superpoints when a setting uses them (a table written before the column: computed).
        sp = shape_superpoints(shape) if tables.pool or tables.superpoints else None
        if u is not None and sp is not None and tables.pool:
            u, pair_weight = pool_units(u, sp, shape.num_parts, pair_weight), None
        shape.superpoints = sp if tables.superpoints else None  # what the sample carries
        out.append(prepare_sample(shape, u, space, num_points, seed, pair_weight))
    return out


def samples_to_table(samples: Sequence[ShapeSample]) -> pa.Table:
    """Prepared samples → ``SAMPLE_SCHEMA`` rows."""
    cols: dict[str, list[Any]] = {name: [] for name in SAMPLE_SCHEMA.names}
    for s in samples:
        cols["shape_id"].append(s.shape_id)
        cols["category"].append(s.category)
        cols["num_points"].append(s.num_points)
        cols["points"].append(s.points.numpy().reshape(-1))
        cols["normals"].append(None if s.normals is None else s.normals.numpy().reshape(-1))
        cols["point_idx"].append(s.point_idx.numpy().astype(np.int32))
        cols["unit_offsets"].append(s.unit_offsets.numpy().astype(np.int32))
        cols["unit_slot"].append(s.unit_slot.numpy().astype(np.int32))
        cols["unit_score"].append(s.unit_score.numpy().astype(np.float32))
        cols["pair_weight"].append(None if s.pair_weight is None else s.pair_weight.numpy().astype(np.float32))
        cols["superpoints"].append(None if s.superpoints is None else s.superpoints.numpy().astype(np.int32))
    return pa.Table.from_pydict(cols, schema=SAMPLE_SCHEMA)


def _flat(column: pa.ChunkedArray | pa.Array, i: int, dtype: Any) -> np.ndarray:
    return np.array(column[i].values.to_numpy(zero_copy_only=False), dtype=dtype)  # a writable copy


def table_to_samples(table: pa.Table) -> list[ShapeSample]:
    """``SAMPLE_SCHEMA`` rows → samples (the inverse of ``samples_to_table``)."""
    table = table.combine_chunks()
    out = []
    for i in range(table.num_rows):
        n = int(table["num_points"][i].as_py())
        normals = table["normals"][i]
        pair_weight = table["pair_weight"][i]
        superpoints = table["superpoints"][i]
        out.append(
            ShapeSample(
                shape_id=str(table["shape_id"][i].as_py()),
                category=int(table["category"][i].as_py()),
                points=torch.from_numpy(_flat(table["points"], i, np.float32).reshape(n, 3)),
                normals=None
                if not normals.is_valid
                else torch.from_numpy(_flat(table["normals"], i, np.float32).reshape(n, 3)),
                labels=None,
                point_idx=torch.from_numpy(_flat(table["point_idx"], i, np.int64)),
                unit_offsets=torch.from_numpy(_flat(table["unit_offsets"], i, np.int64)),
                unit_slot=torch.from_numpy(_flat(table["unit_slot"], i, np.int64)),
                unit_score=torch.from_numpy(_flat(table["unit_score"], i, np.float32)),
                pair_weight=None
                if not pair_weight.is_valid
                else torch.from_numpy(_flat(table["pair_weight"], i, np.float32)),
                superpoints=None
                if not superpoints.is_valid
                else torch.from_numpy(_flat(table["superpoints"], i, np.int64)),
            )
        )
    return out


def table_to_batch(table: pa.Table) -> Batch:
    """A Ray Data batch of ``SAMPLE_SCHEMA`` rows → one collated ``Batch``."""
    return collate(table_to_samples(table))


class PartSource(SampleSource):
    """``distil``'s streaming source in one process: each epoch reads the items in a
    seeded order through a shuffle buffer of ``shuffle_samples`` samples (~45 MB at 2048
    points) and yields batches; memory is bounded by the buffer and one part.

    items: the student's ``PartItem``s (``cluster.store.layout.plan_parts``) · stream(epoch):
    where the training batches come from instead (a Ray Train worker's Ray Data shard;
    the bounded reads — calibration, references, validation — still come from the parts)
    · num_train: the training shapes (units, not held out) the schedule is sized for.
    """

    def __init__(
        self,
        storage: Storage,
        tables: Tables,
        items: Sequence[PartItem],
        space: LabelSpace,
        num_points: int | None,
        batch_size: int,
        seed: int,
        val_fraction: float = 0.0,
        shuffle_samples: int = 1024,
        stream: Callable[[int], Iterable[Batch]] | None = None,
        order_seed: int | None = None,
        fold: tuple[int, int] = (-1, 1),
    ) -> None:
        if not items:
            raise ValueError(f"{storage.uri(tables.shapes_dir)}: no shape part holds {list(space.categories)}")
        self.storage, self.tables, self.items, self.space = storage, tables, list(items), space
        self.num_points, self.batch_size, self.seed = num_points, batch_size, seed
        self.order_seed = seed if order_seed is None else order_seed
        self.val_fraction, self.shuffle_samples = val_fraction, max(batch_size, shuffle_samples)
        self.fold = fold
        with_units = sum(i.with_units for i in self.items)
        kept = (1.0 - val_fraction) * ((fold[1] - 1) / fold[1] if fold[0] >= 0 else 1.0)
        self.num_train = max(1, round(with_units * kept))
        self.has_validation = val_fraction > 0.0
        self._calibration: list[ShapeSample] | None = None
        self.stream = stream

    # -- reading ---------------------------------------------------------------------
    def _load(self, item: PartItem) -> list[ShapeSample]:
        return load_item(self.storage, self.tables, item, self.space, self.num_points, self.seed)

    def is_train(self, s: ShapeSample) -> bool:
        return s.num_units > 0 and trains_on(s.shape_id, self.seed, self.val_fraction, *self.fold)

    def scan(self, items: Iterable[PartItem] | None = None) -> Iterator[list[ShapeSample]]:
        """Every sample of the items, one part at a time (table order)."""
        for item in self.items if items is None else items:
            yield self._load(item)

    # -- SampleSource ----------------------------------------------------------------
    def train_batches(self, epoch: int, scores: dict[str, np.ndarray]) -> Iterable[Batch]:
        if self.stream is not None:
            return self.stream(epoch)
        return self._part_batches(epoch)

    def _part_batches(self, epoch: int) -> Iterator[Batch]:
        """A shuffle buffer of ``shuffle_samples``: parts are read in a seeded order until
        the buffer is full, then random batches leave it until it is half empty."""
        rng = np.random.default_rng(mix_seed(self.order_seed, epoch, 29))
        order = [self.items[int(i)] for i in rng.permutation(len(self.items))]
        buffer: list[ShapeSample] = []
        batches = 0
        while order or buffer:
            while order and len(buffer) < self.shuffle_samples:
                buffer += [s for s in self._load(order.pop(0)) if self.is_train(s)]
            perm = rng.permutation(len(buffer))
            buffer = [buffer[int(j)] for j in perm]
            keep = self.shuffle_samples // 2 if order else 0
            while len(buffer) > keep and buffer:
                yield collate(buffer[: self.batch_size])
                buffer = buffer[self.batch_size :]
                batches += 1
        if not batches and self.fold[0] >= 0:
            fold, folds = self.fold
            raise NotFoundError(
                f"{self.storage.uri(self.tables.shapes_dir)}: the cross-fitted student of fold {fold} has no "
                f"training shape (every shape with units is in fold {fold} of {folds}) — lower train.relabel_folds "
                "or distil on more shapes"
            )

    def _categories_of(self, item: PartItem) -> list[int]:
        """The label-space indices of an item's categories (from its manifest)."""
        return [self.space.categories.index(c) for c in item.categories if c in self.space.categories]

    def _trained_categories(self) -> set[int]:
        """The categories of parts that hold shapes with units (from the manifests)."""
        return {c for item in self.items if item.with_units for c in self._categories_of(item)}

    def _pick(self, total: int, keep: Callable[[ShapeSample], bool]) -> Iterator[list[ShapeSample]]:
        """``total`` samples shared by the trained categories (``stratified_chunks``), reading
        only parts whose categories still need some."""
        cats = self._trained_categories()
        return stratified_chunks(
            self.items, self._load, category_quota(total, len(cats)), cats, self._categories_of, keep
        )

    def calibration_samples(self) -> list[ShapeSample]:
        if self._calibration is None:
            chunks = self._pick(CALIBRATION_SHAPES, self.is_train)
            self._calibration = sorted((s for chunk in chunks for s in chunk), key=lambda s: s.category)
        return self._calibration

    def reference_samples(self) -> list[ShapeSample]:
        cats = range(self.space.num_categories)
        return stratified(self.items, self._load, REFERENCE_SHAPES, cats, self._categories_of)

    def class_count_samples(self) -> list[ShapeSample]:
        cats = self._trained_categories()
        return stratified(self.items, self._load, CLASS_COUNT_SHAPES, cats, self._categories_of, self.is_train)

    def validation_chunks(self) -> Iterator[list[ShapeSample]]:
        if not self.has_validation:
            return iter(())

        def held_out(s: ShapeSample) -> bool:
            return s.num_units > 0 and in_validation(s.shape_id, self.seed, self.val_fraction)

        return self._pick(VALIDATION_SHAPES, held_out)
