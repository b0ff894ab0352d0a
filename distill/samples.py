"""Samples and batches: a ``Shape`` with its ``KnowledgeUnits`` as tensors, and collation.

Units stay flat with offsets (unit k covers ``point_idx[offsets[k]:offsets[k+1]]``);
``collate`` stacks clouds (B, N, 3) and concatenates units with each element's point
indices shifted by b·N (Pointcept-style offsets). ``epoch_batches`` shards one epoch of
an in-memory list over workers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from distill.labels import LabelSpace
from distill.records import KnowledgeUnits, Shape


@dataclass
class ShapeSample:
    """One shape ready for the student.

    points: (N, 3) float32 · normals: (N, 3) float32 or None · labels: (N,) int64 or None
    (ground truth, evaluation only; never read by training) · category: index into the
    ``LabelSpace`` · point_idx: (M,) int64 covered points of all units back to back ·
    unit_offsets: (K + 1,) int64 · unit_slot: (K,) int64 logit slot of each unit's label ·
    unit_score: (K,) float32 current scores · units: the source ``KnowledgeUnits`` (point
    indices in the shape's original indexing; re-scored copies are made from it) ·
    pair_weight: (M,) float32 relative weight of each (point, unit) pair, set by a
    point-level re-scoring rule (``train.rescore=point``), or None (all 1) · pair_source:
    (M,) int64 the pair of ``units`` (index into its ``point_idx``) each pair was copied
    from by resampling, or None when the points were not resampled (pair m is source m) ·
    superpoints: (N,) int64 each point's superpoint (``distill.superpoints``), or None.
    """

    shape_id: str
    category: int
    points: Tensor
    normals: Tensor | None
    labels: Tensor | None
    point_idx: Tensor
    unit_offsets: Tensor
    unit_slot: Tensor
    unit_score: Tensor
    units: KnowledgeUnits | None = None
    pair_weight: Tensor | None = None
    pair_source: Tensor | None = None
    superpoints: Tensor | None = None

    @property
    def num_points(self) -> int:
        return int(self.points.shape[0])

    @property
    def num_units(self) -> int:
        return int(self.unit_slot.shape[0])


def resample_units(point_idx: np.ndarray, offsets: np.ndarray, choice: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Re-index units after resampling points: new point p is old point ``choice[p]``.

    point_idx: (M,) · offsets: (K + 1,) · choice: (n,) int64 → (point_idx', offsets'):
    unit k now covers every new position whose source point it covered (a duplicated
    source point is covered twice; a dropped one not at all).
    """
    new_idx, new_offsets, _ = resample_pairs(point_idx, offsets, choice)
    return new_idx, new_offsets


def resample_pairs(
    point_idx: np.ndarray, offsets: np.ndarray, choice: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``resample_units`` and, for each new (point, unit) pair, the old pair it copies.

    → (point_idx' (M',), offsets' (K + 1,), source (M',) int64 index into ``point_idx``),
    so per-pair values (re-scoring's pair weights) follow the pairs through resampling.
    """
    order = np.argsort(choice, kind="stable")
    sorted_src = choice[order]
    lo = np.searchsorted(sorted_src, point_idx, "left")
    hi = np.searchsorted(sorted_src, point_idx, "right")
    count = hi - lo  # new positions per (unit, old point) pair
    pair = np.repeat(np.arange(len(point_idx)), count)
    within = np.arange(len(pair)) - np.repeat(np.cumsum(count) - count, count)
    new_idx = order[lo[pair] + within]
    unit_of_pair = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    sizes = np.bincount(unit_of_pair[pair], minlength=len(offsets) - 1)
    return new_idx.astype(np.int64), np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64), pair.astype(np.int64)


def pairs_to_source(values: np.ndarray, source: np.ndarray | None, num_source: int) -> np.ndarray:
    """Per-pair values of a resampled sample → per pair of its source units.

    values: (M',) float · source: (M',) int64 (``ShapeSample.pair_source``; None: identity)
    · num_source: M, the source units' pairs → (M,) float32: the mean over each source
    pair's copies; 1.0 for a pair whose point the resampling dropped (it never trains).
    """
    values = np.asarray(values, np.float64)
    if source is None:
        if len(values) != num_source:
            raise ValueError(f"{len(values)} pair values for {num_source} pairs and no pair_source")
        return values.astype(np.float32)
    if len(values) != len(source):
        raise ValueError(f"{len(values)} pair values for a pair_source of {len(source)}")
    count = np.bincount(source, minlength=num_source)
    total = np.bincount(source, weights=values, minlength=num_source)
    return np.where(count > 0, total / np.maximum(count, 1), 1.0).astype(np.float32)


def point_choice(n: int, num_points: int, seed: int, shape_id: str) -> np.ndarray:
    """Which of a shape's ``n`` points make its ``num_points``: without replacement when it
    has enough (in order), else all of them plus random repeats; seeded by ``seed`` and the
    shape id, so every stage resamples a shape alike."""
    rng = np.random.default_rng([seed, *shape_id.encode()])
    if n >= num_points:
        return np.sort(rng.choice(n, num_points, replace=False))
    return np.concatenate([np.arange(n), rng.choice(n, num_points - n, replace=True)])


def prepare_sample(
    shape: Shape,
    units: KnowledgeUnits | None,
    space: LabelSpace,
    num_points: int | None = None,
    seed: int = 0,
    pair_weight: np.ndarray | None = None,
) -> ShapeSample:
    """A ``Shape`` and its units (None: none) → a ``ShapeSample`` in ``space``'s slots.

    num_points: resample the shape to exactly this many points (without replacement when
    it has enough, else all of them plus random repeats; seeded by ``seed`` and the shape
    id), re-indexing the units; None keeps the shape's own points · pair_weight: (M,)
    relative weights of the units' pairs (a point-level re-scoring), carried through the
    resampling; None: all 1.
    """
    c = space.category_index(shape.category, shape.part_names)
    if units is None:
        units = KnowledgeUnits.empty(shape.shape_id)
    if units.shape_id != shape.shape_id:
        raise ValueError(f"units of {units.shape_id!r} given for shape {shape.shape_id!r}")
    if len(units) and (units.label.min() < 0 or units.label.max() >= shape.num_parts):
        raise ValueError(f"units of {shape.shape_id}: labels outside [0, {shape.num_parts})")
    if len(units.point_idx) and (units.point_idx.min() < 0 or units.point_idx.max() >= shape.num_points):
        raise ValueError(f"units of {shape.shape_id}: point indices outside [0, {shape.num_points})")
    points, normals, labels, superpoints = shape.points, shape.normals, shape.labels, shape.superpoints
    if pair_weight is not None and len(pair_weight) != len(units.point_idx):
        raise ValueError(
            f"units of {shape.shape_id}: {len(pair_weight)} pair weights for {len(units.point_idx)} (point, unit) pairs"
        )
    point_idx, offsets = units.point_idx.astype(np.int64), units.offsets.astype(np.int64)
    source = None
    if num_points is not None and num_points != shape.num_points:
        choice = point_choice(shape.num_points, num_points, seed, shape.shape_id)
        points = points[choice]
        normals = None if normals is None else normals[choice]
        labels = None if labels is None else labels[choice]
        superpoints = None if superpoints is None else superpoints[choice]
        point_idx, offsets, source = resample_pairs(point_idx, offsets, choice)
    if pair_weight is not None:
        pair_weight = np.asarray(pair_weight, np.float32)
        pair_weight = pair_weight if source is None else pair_weight[source]
    return ShapeSample(
        shape_id=shape.shape_id,
        category=c,
        points=torch.from_numpy(np.ascontiguousarray(points, np.float32)),
        normals=None if normals is None else torch.from_numpy(np.ascontiguousarray(normals, np.float32)),
        labels=None if labels is None else torch.from_numpy(np.asarray(labels, np.int64)),
        point_idx=torch.from_numpy(point_idx),
        unit_offsets=torch.from_numpy(offsets),
        unit_slot=torch.from_numpy(units.label.astype(np.int64) + int(space.offsets[c])),
        unit_score=torch.from_numpy(units.score.astype(np.float32)),
        units=units,
        pair_weight=None if pair_weight is None else torch.from_numpy(np.ascontiguousarray(pair_weight)),
        pair_source=None if source is None else torch.from_numpy(source),
        superpoints=None if superpoints is None else torch.from_numpy(np.asarray(superpoints, np.int64)),
    )


def prepare_samples(
    shapes: Sequence[Shape],
    units_by_id: dict[str, KnowledgeUnits],
    space: LabelSpace,
    num_points: int | None = None,
    seed: int = 0,
) -> list[ShapeSample]:
    """``prepare_sample`` for each shape (a shape without units gets none)."""
    return [prepare_sample(s, units_by_id.get(s.shape_id), space, num_points, seed) for s in shapes]


@dataclass
class Batch:
    """Samples collated: points (B, N, 3) · normals (B, N, 3) or None · category (B,) ·
    point_idx (M,) into the B·N flattened points · unit_offsets (K + 1,) · unit_slot,
    unit_score (K,) · pair_weight (M,) or None · superpoints (B·N,) int64 ids unique
    within the batch (element b's ids shifted past element b−1's), or None."""

    shape_ids: list[str]
    points: Tensor
    normals: Tensor | None
    category: Tensor
    point_idx: Tensor
    unit_offsets: Tensor
    unit_slot: Tensor
    unit_score: Tensor
    pair_weight: Tensor | None = None
    superpoints: Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        move = {k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()}
        return Batch(**move)


def collate(samples: Sequence[ShapeSample]) -> Batch:
    """Stack clouds and concatenate units, shifting element b's point indices by b·N."""
    if not samples:
        raise ValueError("collate: no samples")
    n = samples[0].num_points
    if any(s.num_points != n for s in samples):
        raise ValueError(
            f"collate: samples have different point counts {sorted({s.num_points for s in samples})}; "
            "prepare them with num_points="
        )
    has_normals = all(s.normals is not None for s in samples)
    unit_base = np.cumsum([0] + [int(s.unit_offsets[-1]) for s in samples])
    offsets = [samples[0].unit_offsets[:1]] + [
        s.unit_offsets[1:] + int(base) for s, base in zip(samples, unit_base[:-1])
    ]
    return Batch(
        shape_ids=[s.shape_id for s in samples],
        points=torch.stack([s.points for s in samples]),
        normals=torch.stack([s.normals for s in samples]) if has_normals else None,  # type: ignore[misc]
        category=torch.tensor([s.category for s in samples], dtype=torch.long),
        point_idx=torch.cat([s.point_idx + b * n for b, s in enumerate(samples)]),
        unit_offsets=torch.cat(offsets),
        unit_slot=torch.cat([s.unit_slot for s in samples]),
        unit_score=torch.cat([s.unit_score for s in samples]),
        pair_weight=(
            torch.cat([torch.ones(len(s.point_idx)) if s.pair_weight is None else s.pair_weight for s in samples])
            if any(s.pair_weight is not None for s in samples)
            else None
        ),
        superpoints=_batch_superpoints(samples),
    )


def _batch_superpoints(samples: Sequence[ShapeSample]) -> Tensor | None:
    """The samples' superpoint ids made unique in the batch (None unless all have them)."""
    ids = [s.superpoints for s in samples if s.superpoints is not None]
    if len(ids) < len(samples):
        return None
    out, base = [], 0
    for sp in ids:
        out.append(sp + base)
        base += int(sp.max()) + 1 if len(sp) else 0
    return torch.cat(out)


def mix_seed(*parts: int) -> int:
    """One seed from several integers (run seed, epoch, rank, purpose): every stream of a
    run is seeded by what it is for, so a resumed run replays the same draws."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def epoch_batches(
    samples: Sequence[ShapeSample],
    batch_size: int,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    shuffle: bool = True,
) -> list[Batch]:
    """One epoch's batches for worker ``rank`` of ``world_size``.

    The permutation depends on (seed, epoch) only, so all workers agree on it; worker r
    takes positions r, r + W, ... (as ``DistributedSampler``), the permutation padded by
    wrapping so every worker runs the same number of steps (DDP needs that).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    n = len(samples)
    if n == 0:
        return []
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, epoch, 17))).tolist()
    else:
        order = list(range(n))
    total = math.ceil(n / world_size) * world_size
    order = (order * math.ceil(total / n))[:total][rank::world_size]
    return [collate([samples[i] for i in order[s : s + batch_size]]) for s in range(0, len(order), batch_size)]


def size_batches(samples: Sequence[ShapeSample], batch_size: int) -> list[list[int]]:
    """Indices of ``samples`` in batches of at most ``batch_size`` with equal point counts
    (``collate`` stacks clouds), in order within each count."""
    by_n: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        by_n.setdefault(s.num_points, []).append(i)
    return [idx[k : k + batch_size] for idx in by_n.values() for k in range(0, len(idx), batch_size)]


def steps_per_epoch(num_samples: int, batch_size: int, world_size: int = 1) -> int:
    return math.ceil(math.ceil(num_samples / world_size) / batch_size)


def split_validation(samples: Sequence[ShapeSample], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Hold out ``fraction`` of each category's shapes (≥ 1 if it has ≥ 2, never all).

    → (train indices, validation indices), each sorted; depends on shape ids and seed
    only, not on the order of ``samples``.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction={fraction} must be in [0, 1)")
    by_cat: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        by_cat.setdefault(s.category, []).append(i)
    val: list[int] = []
    for c, idx in sorted(by_cat.items()):
        if fraction == 0.0 or len(idx) < 2:
            continue
        idx = sorted(idx, key=lambda i: samples[i].shape_id)
        k = min(len(idx) - 1, max(1, round(fraction * len(idx))))
        perm = np.random.default_rng(mix_seed(seed, c, 23)).permutation(len(idx))
        val += [idx[j] for j in perm[:k]]
    val_set = set(val)
    return [i for i in range(len(samples)) if i not in val_set], sorted(val)
