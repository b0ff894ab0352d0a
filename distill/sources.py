"""Where ``distil`` takes its samples from: a ``SampleSource``.

``distil`` never holds a corpus itself. It asks its source, each epoch, for this worker's
training batches, and, when it needs them, for a bounded set of un-augmented samples
(BatchNorm re-calibration, the pose references) and for the validation shapes in chunks.

* ``InMemorySource`` — a list of ``ShapeSample`` held in memory (tests, benchmarks, small
  corpora): the unit scores live in ``DistilState.scores`` and backward distillation can
  re-score inside the loop.
* Streaming sources (``cluster.samples.PartSource`` for one process,
  ``cluster.train_ray`` for Ray Train workers) read bounded parts from storage on every
  epoch; their scores live in the round's score table, so ``distil`` stops for an
  external re-scoring pass and is resumed with the next round.

``in_validation`` is the streaming sources' validation split: a hash of (seed, shape id),
so any process decides it for one shape alone, without seeing the others.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace

import numpy as np
import torch

from distill.samples import Batch, ShapeSample, epoch_batches, split_validation

CALIBRATION_SHAPES = 64
"""Shapes for BatchNorm re-calibration: 64 × 2048 points estimate a channel's mean and
variance well, and the cost stays a fraction of an epoch however large the corpus."""
VALIDATION_SHAPES = 1024
"""Most held-out shapes a streaming source scores each epoch (the first in table order):
enough to rank checkpoints, and an epoch's validation never reads the whole corpus."""
REFERENCE_SHAPES = 32
"""Shapes per category offered to the pose co-alignment (``student.align``)."""


def in_validation(shape_id: str, seed: int, fraction: float) -> bool:
    """Whether ``shape_id`` is held out for validation: a stable hash of (seed, id) below
    ``fraction`` (the same answer in every process, for every corpus size)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction={fraction} must be in [0, 1)")
    if fraction == 0.0:
        return False
    digest = hashlib.blake2b(f"{seed}:{shape_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64 < fraction


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
        """At most ``CALIBRATION_SHAPES`` training samples, the same ones every call."""
        raise NotImplementedError

    def reference_samples(self) -> list[ShapeSample]:
        """Up to ``REFERENCE_SHAPES`` samples per category (pose co-alignment)."""
        raise NotImplementedError

    def validation_chunks(self) -> Iterator[list[ShapeSample]]:
        """The validation samples, a bounded chunk at a time."""
        return iter(())

    def all_samples(self, scores: dict[str, np.ndarray]) -> list[ShapeSample]:
        """Every sample with ``scores`` (in-memory sources only: in-loop re-scoring)."""
        raise NotImplementedError(f"{type(self).__name__} re-scores outside the loop")


class InMemorySource(SampleSource):
    """Samples held in a list; the validation split is ``split_validation``'s (per category).

    rank, world_size: this worker's shard of each epoch (``epoch_batches``).
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
    ) -> None:
        if not samples:
            raise ValueError("distil: no samples")
        if len({s.shape_id for s in samples}) != len(samples):
            raise ValueError("distil: shape ids repeat in samples")
        self.samples = list(samples)
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
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
        return epoch_batches(train, self.batch_size, self.seed, epoch, self.rank, self.world_size)

    def calibration_samples(self) -> list[ShapeSample]:
        train = [self.samples[i] for i in self.train_idx]
        if len(train) > CALIBRATION_SHAPES:
            train = [train[int(i)] for i in np.linspace(0, len(train) - 1, CALIBRATION_SHAPES).round()]
        return train

    def reference_samples(self) -> list[ShapeSample]:
        return list(self.samples)

    def validation_chunks(self) -> Iterator[list[ShapeSample]]:
        if self.val_samples:
            yield self.val_samples

    def all_samples(self, scores: dict[str, np.ndarray]) -> list[ShapeSample]:
        return [self._current(i, scores) for i in range(len(self.samples))]
