"""Backward distillation in one process (docs/design.md §3): re-score the units of in-memory
samples with a snapshot of the student, and move a state that stopped for an external
re-scoring (``cluster.passes.rescore``) on to the next round.

The pure per-shape rules are in ``distill.rescore``; this module runs them over samples
with a model: ``units_of`` (a sample's units), ``predict_probs`` (a snapshot's per-point
distributions), ``rescore_with_rule`` (new scores, and pair weights for the point rules).
The cross-fitting study that feeds the crossfit rules is in ``distill.crossfit``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from distill.config import TrainConfig
from distill.labels import LabelSpace
from distill.passes import eval_logits, predict_samples
from distill.records import KnowledgeUnits
from distill.rescore import balance_part_mass, rescore, rescore_rule
from distill.samples import ShapeSample


def apply_rescore(state: dict[str, Any], scores: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """A state that stopped for external re-scoring, moved to round + 1: training resumes
    from it exactly as if ``distil`` had re-scored in the loop.

    state: a ``DistilState.state_dict()`` with ``pending_rescore`` · scores: for a state
    that carries its scores (in-memory source), the new score array of every one of its
    shapes (same lengths); None for a streaming run, whose new scores are in the round's
    score table → a new state dict.
    """
    if not state.get("pending_rescore"):
        raise ValueError(f"state after epoch {state.get('epoch')} is not waiting for a re-scoring")
    old = state["scores"]
    out = dict(state)
    if scores is not None:
        if set(scores) != set(old):
            missing, extra = sorted(set(old) - set(scores)), sorted(set(scores) - set(old))
            raise ValueError(f"re-scored shapes differ from the run's: missing {missing[:5]}, unexpected {extra[:5]}")
        for sid, s in scores.items():
            if len(s) != len(old[sid]):
                raise ValueError(f"shape {sid}: {len(s)} new scores for {len(old[sid])} units")
        out["scores"] = {k: np.asarray(v, np.float32).copy() for k, v in scores.items()}
    elif old:
        raise ValueError("this state carries its unit scores: give apply_rescore the new ones")
    out["round"] = int(state["round"]) + 1
    out["round_start"] = len(state["losses"])
    out["pending_rescore"] = False
    out["history"] = copy.deepcopy(state["history"])
    if out["history"]:
        out["history"][-1]["rescored"] = 1.0
    return out


def units_of(s: ShapeSample, space: LabelSpace, score: np.ndarray | None = None) -> KnowledgeUnits:
    """The sample's units in its own point indexing (after any resampling), so a rule can
    read them against the student's per-point output: labels in the category's part
    indices, views from the source units where the sample keeps them (``units``; zeros
    otherwise: only the crossfit folds by view read them), scores ``score`` (default: the
    sample's own)."""
    view = s.units.view if s.units is not None and len(s.units) == s.num_units else np.zeros(s.num_units, np.int64)
    return KnowledgeUnits(
        s.shape_id, np.asarray(view, np.int64), s.unit_slot.numpy() - space.offsets[s.category],
        np.asarray(s.unit_score.numpy() if score is None else score, np.float32),
        s.point_idx.numpy(), s.unit_offsets.numpy(),
    )  # fmt: skip


@torch.no_grad()
def predict_probs(
    model: nn.Module, samples: Sequence[ShapeSample], device: torch.device | str, space: LabelSpace, batch_size: int = 8
) -> list[np.ndarray]:
    """Per sample, (N, P) float32: the softmax over the sample's category's P parts of
    every point, which the point rules weigh pairs by (eval mode, no augmentation; the
    caller recalibrates BatchNorm)."""
    out: list[np.ndarray | None] = [None] * len(samples)
    off = space.offsets
    for chunk, logits in eval_logits(model, samples, device, space, batch_size):
        prob = torch.softmax(logits.float(), -1).cpu().numpy()
        for row, i in enumerate(chunk):
            c = samples[i].category
            out[i] = prob[row, :, off[c] : off[c + 1]].astype(np.float32)
    return out  # type: ignore[return-value]


def rescore_with_rule(
    rule: str,
    snapshots: Sequence[nn.Module],
    samples: Sequence[ShapeSample],
    space: LabelSpace,
    folds: dict[str, np.ndarray] | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 8,
    probs: list[list[np.ndarray]] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """New scores of every sample's units under ``rule`` (``distill.rescore.rescore_rule``):
    the one runner of the rules, shared by training in memory, the re-scoring pass over
    storage and the benchmarks, so all of them score alike.

    snapshots: one model (agreement, point: the run's own) or the K cross-fitted ones
    (crossfit rules, ``distill.crossfit``) · folds: each sample's (K_units,) unit folds
    (crossfit rules) · probs: precomputed ``predict_probs`` per snapshot (skips the
    predictions) → (scores by shape id, relative pair weights by shape id or None for
    unit rules).
    """
    if probs is None:
        probs = [predict_probs(m, samples, device, space, batch_size) for m in snapshots]
    scores, pairs = {}, {}
    for i, s in enumerate(samples):
        fold = None if folds is None else folds[s.shape_id]
        score, rel = rescore_rule(rule, units_of(s, space), [p[i] for p in probs], fold)
        scores[s.shape_id] = score
        if rel is not None:
            pairs[s.shape_id] = rel
    return scores, (pairs if rule in ("point", "crossfit_point") else None)


def rescore_samples(
    model: nn.Module,
    samples: Sequence[ShapeSample],
    space: LabelSpace,
    scores: dict[str, np.ndarray] | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 8,
) -> dict[str, np.ndarray]:
    """Backward distillation over samples: each unit's new score (``rescore``) from the
    student's predictions (eval mode; recalibrate its BatchNorm first).

    scores: the current scores by shape id (default: the samples' own) → new scores by id.
    """
    preds = predict_samples(model, samples, device, space, batch_size)
    out = {}
    for s, pred in zip(samples, preds):
        current = None if scores is None else scores[s.shape_id]
        out[s.shape_id] = rescore(units_of(s, space, current), pred).score
    return out


def rescore_samples_with_rule(
    model: nn.Module,
    samples: Sequence[ShapeSample],
    space: LabelSpace,
    cfg: TrainConfig,
    device: torch.device | str,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Backward distillation with ``cfg.rescore`` (``rescore_with_rule``): new unit scores
    and relative pair weights by shape id (empty for unit rules). ``samples`` carry the
    current scores (the ``_balanced`` rules keep each part's mass of them); ``model``: the
    run's snapshot, BatchNorm recalibrated."""
    rule = cfg.rescore.removesuffix("_balanced")
    scores, pairs = rescore_with_rule(rule, [model], samples, space, None, device, cfg.batch_size)
    if cfg.rescore.endswith("_balanced"):  # every part (logit slot) keeps its score mass
        ids = [s.shape_id for s in samples]
        balanced = balance_part_mass(
            [s.unit_slot.numpy() for s in samples],
            [np.diff(s.unit_offsets.numpy()) for s in samples],
            [s.unit_score.numpy() for s in samples],
            [scores[i] for i in ids],
        )
        scores = dict(zip(ids, balanced))
    return scores, pairs or {}


def units_with_scores(
    samples: Sequence[ShapeSample], scores: dict[str, np.ndarray], round: int
) -> dict[str, KnowledgeUnits]:
    """The source units of the samples that have any, with their scores of ``round``: what
    ``distil`` hands ``on_rescore`` and returns (in the source's point indexing)."""
    out = {}
    for s in samples:
        if s.units is not None and s.num_units:
            out[s.shape_id] = s.units.with_scores(scores[s.shape_id], round)
    return out
