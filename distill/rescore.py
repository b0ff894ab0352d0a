"""Backward distillation (DESIGN §3): re-score knowledge units with the student, and when.

``rescore`` replaces each unit's score by the fraction of its points where the student
predicts the unit's label (the official code's per-box "IoU", intersect / |box points|);
an empty unit scores 0 (the code's ``clip(union, min=1)``). ``plateau_reached`` is the
official trigger; ``should_rescore`` is the one decision the training loop asks.
"""

from __future__ import annotations

import numpy as np

from distill.config import TrainConfig
from distill.records import KnowledgeUnits


def _check_pred(units: KnowledgeUnits, pred: np.ndarray) -> np.ndarray:
    pred = np.asarray(pred)
    if pred.ndim != 1:
        raise ValueError(f"pred must be (N,), got shape {pred.shape}")
    if len(units.point_idx) and int(units.point_idx.max()) >= len(pred):
        raise ValueError(
            f"units of {units.shape_id} cover point {int(units.point_idx.max())} but pred has {len(pred)} points"
        )
    return pred.astype(np.int64)


def unit_hits(units: KnowledgeUnits, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per unit: how many of its points the student labels with the unit's label, and its size.

    pred: (N,) int64 → (hits (K,) int64, sizes (K,) int64).
    """
    pred = _check_pred(units, pred)
    sizes = np.diff(units.offsets).astype(np.int64)
    unit_of_pair = np.repeat(np.arange(len(units)), sizes)
    hit = pred[units.point_idx] == units.label[unit_of_pair]
    hits = np.bincount(unit_of_pair[hit], minlength=len(units)).astype(np.int64)
    return hits, sizes


def rescore(units: KnowledgeUnits, pred: np.ndarray) -> KnowledgeUnits:
    """Backward distillation of one shape: score_k ← |{i ∈ k : pred_i = y_k}| / |k|.

    units: the shape's K units · pred: (N,) int64 the student's labels of the shape's
    points → the same units with new scores (float32 in [0, 1]) and ``round + 1``.
    """
    hits, sizes = unit_hits(units, pred)
    score = np.where(sizes > 0, hits / np.maximum(sizes, 1), 0.0).astype(np.float32)
    return units.with_scores(score, units.round + 1)


def rescore_reference(units: KnowledgeUnits, pred: np.ndarray) -> KnowledgeUnits:
    """Slow reference of ``rescore``: one unit and one point at a time."""
    pred = _check_pred(units, pred)
    score = []
    for k in range(len(units)):
        pts = units.unit_points(k)
        agree = sum(1 for i in pts if pred[i] == units.label[k])
        score.append(agree / len(pts) if len(pts) else 0.0)
    return units.with_scores(np.asarray(score, np.float32), units.round + 1)


def knowledge_agreement(units: KnowledgeUnits, pred: np.ndarray) -> tuple[float, float]:
    """Score-weighted agreement of a prediction with the teacher's units (no test labels).

    → (Σ_k s_k · hits_k, Σ_k s_k · |k|); their ratio over a validation split is the
    checkpoint-selection score (``train.select=val``). Pass the teacher's original units,
    not re-scored ones (those are the student's own opinion).
    """
    hits, sizes = unit_hits(units, pred)
    s = units.score.astype(np.float64)
    return float((s * hits).sum()), float((s * sizes).sum())


def plateau_reached(losses: list[float], window: int = 5, delta: float = 0.01, min_epochs: int = 5) -> bool:
    """The official trigger: the ``window``-epoch moving average of the loss moved < delta.

    losses: one mean loss per epoch, oldest first. After epoch e (= len(losses)) the
    moving average m_e is the mean of the last ``window`` losses (fewer early on) and
    m_{e−1} the same one epoch earlier (m_0 = 0, as the code initialises it); the
    plateau is reached when |m_e − m_{e−1}| < delta and e ≥ min_epochs.
    """
    if window < 1 or min_epochs < 1:
        raise ValueError(f"window={window} and min_epochs={min_epochs} must be >= 1")
    e = len(losses)
    if e < min_epochs:
        return False
    cur = float(np.mean(losses[max(0, e - window) :]))
    prev = float(np.mean(losses[max(0, e - 1 - window) : e - 1])) if e > 1 else 0.0
    return abs(cur - prev) < delta


def should_rescore(epoch: int, losses: list[float], cfg: TrainConfig, rounds_done: int) -> bool:
    """Whether to re-score the units now, after ``epoch`` (1-based) epochs are complete.

    losses: the mean loss of each epoch *since the last re-scoring* (all epochs before the
    first), so each round waits for a new plateau of its own loss. Never after the last
    epoch (the new scores would train nothing) nor beyond ``train.bd_rounds`` rounds.
    ``bd_trigger=epoch`` re-scores after epochs bd_epoch, 2·bd_epoch, ...;
    ``bd_trigger=plateau`` when ``plateau_reached`` with ``bd_plateau_delta``.
    """
    if epoch < 1 or rounds_done < 0:
        raise ValueError(f"epoch={epoch} must be >= 1 and rounds_done={rounds_done} >= 0")
    if rounds_done >= cfg.bd_rounds or epoch >= cfg.epochs:
        return False
    if cfg.bd_trigger == "epoch":
        return epoch >= cfg.bd_epoch * (rounds_done + 1)
    return plateau_reached(losses, window=5, delta=cfg.bd_plateau_delta, min_epochs=5)
