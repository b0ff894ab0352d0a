"""Where ``distil`` takes its samples from: a ``SampleSource``.

``distil`` never holds a corpus itself. It asks its source, each epoch, for this worker's
training batches, and, when it needs them, for a bounded set of un-augmented samples
(BatchNorm re-calibration, the pose references) and for the validation shapes in chunks.

* ``InMemorySource`` — a list of ``ShapeSample`` held in memory (tests, benchmarks, small
  corpora): the unit scores live in ``DistilState.scores`` and backward distillation can
  re-score inside the loop.
* Streaming sources (``cluster.training.samples.PartSource`` for one process,
  ``cluster.training.train_ray`` for Ray Train workers) read bounded parts from storage on every
  epoch; their scores live in the round's score table, so ``distil`` stops for an
  external re-scoring pass and is resumed with the next round.

``in_validation`` is the streaming sources' validation split: a hash of (seed, shape id),
so any process decides it for one shape alone, without seeing the others.

Every bounded subset a source hands out for statistics (BatchNorm re-calibration, pose
references, validation) is chosen by one rule, ``stratified``: the first few samples of
*each category* in the source's order, never the first few of the corpus. Corpora are
stored grouped by category, so "the first 64 shapes" is one category at scale, and a
student whose BatchNorm statistics come from one category predicts the others from
statistics of the wrong shapes (docs/design.md §5.12).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import replace
from typing import TypeVar

import numpy as np
import torch

from distill.samples import Batch, ShapeSample, epoch_batches, split_validation

T = TypeVar("T")

CALIBRATION_SHAPES = 64
"""Shapes for BatchNorm re-calibration: 64 × 2048 points estimate a channel's mean and
variance well, and the cost stays a fraction of an epoch however large the corpus."""
VALIDATION_SHAPES = 1024
"""Most held-out shapes a streaming source scores each epoch (the first in table order):
enough to rank checkpoints, and an epoch's validation never reads the whole corpus."""
REFERENCE_SHAPES = 32
"""Shapes per category offered to the pose co-alignment (``student.align``)."""
CLASS_COUNT_SHAPES = 64
"""Training shapes per category whose units estimate the corpus's class frequencies
(``train.class_weights=corpus``): the frequency of a part is a property of the category,
so a bounded sample of each category measures it, at any corpus size."""


def category_quota(total: int, num_categories: int) -> int:
    """Samples per category when ``total`` are shared by ``num_categories``: at least one
    each, so every category is covered (the total then exceeds ``total`` only when there
    are more categories than ``total``)."""
    if total < 1:
        raise ValueError(f"total={total} must be >= 1")
    return max(1, total // max(1, num_categories))


def stratified_chunks(
    parts: Iterable[T],
    load: Callable[[T], Sequence[ShapeSample]],
    quota: int,
    categories: Collection[int] = (),
    part_categories: Callable[[T], Collection[int]] | None = None,
    keep: Callable[[ShapeSample], bool] = lambda s: True,
) -> Iterator[list[ShapeSample]]:
    """The first ``quota`` samples of each category that ``keep`` accepts, in the order the
    parts give them, yielded a part at a time (memory: one part).

    parts, load: where the samples come from, one part at a time · categories: the
    category indices to fill: reading stops once each has ``quota`` (empty: read every
    part) · part_categories: the categories a part holds (from its manifest): a part
    whose categories are all full is not loaded, so a corpus stored grouped by category
    is not read to its end.
    """
    counts: dict[int, int] = {}

    def full(cats: Collection[int]) -> bool:
        return bool(cats) and all(counts.get(c, 0) >= quota for c in cats)

    for part in parts:
        if full(categories):
            return
        if part_categories is not None and full(part_categories(part)):
            continue
        picked = []
        for s in load(part):
            if counts.get(s.category, 0) < quota and keep(s):
                counts[s.category] = counts.get(s.category, 0) + 1
                picked.append(s)
        if picked:
            yield picked


def stratified(
    parts: Iterable[T],
    load: Callable[[T], Sequence[ShapeSample]],
    quota: int,
    categories: Collection[int] = (),
    part_categories: Callable[[T], Collection[int]] | None = None,
    keep: Callable[[ShapeSample], bool] = lambda s: True,
) -> list[ShapeSample]:
    """``stratified_chunks`` as one list, grouped by category (ascending), in source order
    within each category."""
    picked = [s for chunk in stratified_chunks(parts, load, quota, categories, part_categories, keep) for s in chunk]
    return sorted(picked, key=lambda s: s.category)  # stable


def in_validation(shape_id: str, seed: int, fraction: float) -> bool:
    """Whether ``shape_id`` is held out for validation: a stable hash of (seed, id) below
    ``fraction`` (the same answer in every process, for every corpus size)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction={fraction} must be in [0, 1)")
    if fraction == 0.0:
        return False
    digest = hashlib.blake2b(f"{seed}:{shape_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64 < fraction


def fold_of(shape_id: str, seed: int, folds: int) -> int:
    """The fold in [0, folds) of ``shape_id`` for cross-fitted self-training
    (``train.relabel_folds``): a stable hash of (seed, id), independent of ``in_validation``'s."""
    if folds < 1:
        raise ValueError(f"folds={folds} must be >= 1")
    digest = hashlib.blake2b(f"fold:{seed}:{shape_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % folds


def trains_on(shape_id: str, seed: int, val_fraction: float, fold: int = -1, folds: int = 1) -> bool:
    """Whether a fit learns from ``shape_id`` (given it has units): not held out for
    validation, and not in the held-out ``fold`` of a cross-fitted student (fold −1: none)."""
    if in_validation(shape_id, seed, val_fraction):
        return False
    return fold < 0 or fold_of(shape_id, seed, folds) != fold


class SampleSource:
    """What ``distil`` needs of its data (see the module docstring).

    num_train: training shapes per epoch, over all workers (sets the schedule's length) ·
    has_validation: whether ``validation_chunks`` yields anything · in_memory: whether
    the unit scores live in ``DistilState.scores`` (in-loop re-scoring possible).
    """

    num_train: int = 0
    has_validation: bool = False
    in_memory: bool = False

    def train_batches(self, epoch: int, scores: dict[str, np.ndarray]) -> Iterable[Batch]:
        """This worker's batches of ``epoch`` (0-based), with the current unit scores."""
        raise NotImplementedError

    def calibration_samples(self) -> list[ShapeSample]:
        """About ``CALIBRATION_SHAPES`` training samples spread over every category that has
        any (``stratified``), the same ones every call."""
        raise NotImplementedError

    def reference_samples(self) -> list[ShapeSample]:
        """Up to ``REFERENCE_SHAPES`` samples per category (pose co-alignment)."""
        raise NotImplementedError

    def class_count_samples(self) -> list[ShapeSample]:
        """Up to ``CLASS_COUNT_SHAPES`` training samples per category (class frequencies)."""
        raise NotImplementedError

    def validation_chunks(self) -> Iterator[list[ShapeSample]]:
        """The validation samples, a bounded chunk at a time."""
        return iter(())

    def all_samples(self, scores: dict[str, np.ndarray]) -> list[ShapeSample]:
        """Every sample with ``scores`` (in-memory sources only: in-loop re-scoring)."""
        raise NotImplementedError(f"{type(self).__name__} re-scores outside the loop")


class InMemorySource(SampleSource):
    """Samples held in a list; the validation split is ``split_validation``'s (per category).

    rank, world_size: this worker's shard of each epoch (``epoch_batches``) · order_seed:
    the seed of the epochs' order (None: ``seed``, which also draws the validation split).
    """

    in_memory = True

    def __init__(
        self,
        samples: Sequence[ShapeSample],
        batch_size: int,
        seed: int,
        select_val: bool = False,
        val_fraction: float = 0.2,
        rank: int = 0,
        world_size: int = 1,
        order_seed: int | None = None,
    ) -> None:
        if not samples:
            raise ValueError("distil: no samples")
        if len({s.shape_id for s in samples}) != len(samples):
            raise ValueError("distil: shape ids repeat in samples")
        self.samples = list(samples)
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.order_seed = seed if order_seed is None else order_seed
        if select_val:
            train_idx, val_idx = split_validation(self.samples, val_fraction, seed)
        else:
            train_idx, val_idx = list(range(len(self.samples))), []
        # Shapes without any unit teach nothing and would only dilute the mean (the official
        # loader skips them too); they are still predicted and re-scored (trivially).
        self.train_idx = [i for i in train_idx if self.samples[i].num_units > 0]
        if not self.train_idx:
            raise ValueError("distil: no training shape has any knowledge unit")
        self.val_samples = [self.samples[i] for i in val_idx]
        self.num_train = len(self.train_idx)
        self.has_validation = bool(self.val_samples)

    def initial_scores(self) -> dict[str, np.ndarray]:
        return {s.shape_id: s.unit_score.numpy().copy() for s in self.samples}

    pair_weights: dict[str, np.ndarray] = {}
    """Relative (point, unit) weights by shape id, set by a point-level re-scoring rule."""

    def _current(self, i: int, scores: dict[str, np.ndarray]) -> ShapeSample:
        s = self.samples[i]
        if s.shape_id in scores:
            s = replace(s, unit_score=torch.from_numpy(scores[s.shape_id]))
        pw = self.pair_weights.get(s.shape_id)
        return s if pw is None else replace(s, pair_weight=torch.from_numpy(pw))

    def train_batches(self, epoch: int, scores: dict[str, np.ndarray]) -> list[Batch]:
        train = [self._current(i, scores) for i in self.train_idx]
        return epoch_batches(train, self.batch_size, self.order_seed, epoch, self.rank, self.world_size)

    def calibration_samples(self) -> list[ShapeSample]:
        train = [self.samples[i] for i in self.train_idx]
        quota = category_quota(CALIBRATION_SHAPES, len({s.category for s in train}))
        return stratified([train], lambda part: part, quota)

    def reference_samples(self) -> list[ShapeSample]:
        return list(self.samples)

    def class_count_samples(self) -> list[ShapeSample]:
        return stratified([[self.samples[i] for i in self.train_idx]], lambda part: part, CLASS_COUNT_SHAPES)

    def validation_chunks(self) -> Iterator[list[ShapeSample]]:
        if self.val_samples:
            yield self.val_samples

    def all_samples(self, scores: dict[str, np.ndarray]) -> list[ShapeSample]:
        return [self._current(i, scores) for i in range(len(self.samples))]
