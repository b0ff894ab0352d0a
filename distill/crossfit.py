"""The cross-fitting study behind the crossfit re-scoring rules (``bench/bd_variants.py``;
not a ``train.rescore`` setting): the snapshots those rules score with.

The rules themselves are ``distill.rescore.rescore_rule``, run over samples by
``distill.backward.rescore_with_rule`` (pass it these snapshots and folds):

* ``unit_folds``: each sample's unit folds;
* ``drop_fold``: a sample without the units of one cross-fitting fold;
* ``train_fold_snapshots``: the K cross-fitted snapshots, snapshot f trained from scratch
  with the run's own schedule on every unit outside fold f, up to the epoch at which the
  main run re-scores.

Cost of the crossfit rules: K more trainings up to the re-scoring epoch; by view each
sees every shape (K × the trunk's epochs), by shape each sees (K−1)/K of the shapes.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from distill.backward import units_of
from distill.config import TrainConfig
from distill.records import KnowledgeUnits
from distill.rescore import crossfit_folds
from distill.samples import mix_seed
from distill.training import distil


def unit_folds(samples: Sequence, space, folds: int, by: str, seed: int) -> dict[str, np.ndarray]:
    """Each sample's unit folds (``crossfit_folds``: ``folds`` of them, by view or shape)."""
    return {s.shape_id: crossfit_folds(units_of(s, space), folds, by, seed) for s in samples}


def _subset(units: KnowledgeUnits, keep: np.ndarray) -> KnowledgeUnits:
    sizes = np.diff(units.offsets)
    return KnowledgeUnits(
        units.shape_id, units.view[keep], units.label[keep], units.score[keep],
        units.point_idx[np.repeat(keep, sizes)], np.concatenate([[0], np.cumsum(sizes[keep])]).astype(np.int64),
        units.teacher, units.round,
    )  # fmt: skip


def drop_fold(sample, fold: np.ndarray, f: int):
    """The sample without the units of fold ``f`` (fold: (K,) int64 per unit)."""
    keep = np.asarray(fold) != f
    off = sample.unit_offsets.numpy()
    sizes = np.diff(off)
    pair_keep = np.repeat(keep, sizes)
    new_off = np.concatenate([[0], np.cumsum(sizes[keep])]).astype(np.int64)
    units = sample.units
    if units is not None:
        units = _subset(units, keep) if len(units) == len(keep) else None
    return replace(
        sample,
        point_idx=sample.point_idx[torch.from_numpy(pair_keep)],
        unit_offsets=torch.from_numpy(new_off),
        unit_slot=sample.unit_slot[torch.from_numpy(keep)],
        unit_score=sample.unit_score[torch.from_numpy(keep)],
        units=units,
        pair_weight=None if sample.pair_weight is None else sample.pair_weight[torch.from_numpy(pair_keep)],
        pair_source=None if sample.pair_source is None else sample.pair_source[torch.from_numpy(pair_keep)],
    )


def fresh_copy(template: nn.Module, seed: int) -> nn.Module:
    """A copy of ``template`` with every parameter re-initialised (seeded)."""
    model = copy.deepcopy(template)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for m in model.modules():
            if hasattr(m, "reset_parameters") and m is not model:
                m.reset_parameters()
    return model


def train_fold_snapshots(
    template: nn.Module,
    samples: Sequence,
    space,
    cfg: TrainConfig,
    epochs: int,
    device: torch.device | str = "cpu",
    seed: int = 0,
    folds: dict[str, np.ndarray] | None = None,
    num_folds: int = 2,
    by: str = "view",
    on_fold_epoch=None,
) -> list[nn.Module]:
    """The K cross-fitted snapshots: snapshot f is ``template`` re-initialised and trained
    (forward distillation, the run's schedule over ``cfg.epochs``, stopped after ``epochs``)
    on every unit whose fold is not f; its BatchNorm statistics come from those samples."""
    folds = folds if folds is not None else unit_folds(samples, space, num_folds, by, seed)
    fold_cfg = replace(cfg, bd_rounds=0, select="last", rescore="agreement")
    out = []
    for f in range(num_folds):
        fold_samples = [drop_fold(s, folds[s.shape_id], f) for s in samples]
        model = fresh_copy(template, mix_seed(seed, f, 41)).to(device)

        def stop(state, f=f) -> bool:
            if on_fold_epoch is not None:
                on_fold_epoch(f, state)
            return state.epoch >= epochs

        distil(model, fold_samples, space, fold_cfg, device, mix_seed(seed, f, 43), on_epoch_end=stop)
        out.append(model)
    return out
