"""Backward distillation (docs/design.md §3): re-score knowledge units with the student, and when.

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


# ----------------------------------------------------------------------------- rules
#
# The paper's rule scores unit k by the agreement of a snapshot that trained on k. For a
# unit with label y, agreement − true precision = (#{student says y, truth ≠ y} −
# #{student ≠ y, truth = y}) / |k|: it departs from the truth exactly along the student's
# own mistakes, so a student with systematic errors rewards them. The rules below break
# that loop (``train.rescore`` offers ``RESCORE_RULES`` of ``distill.config``; the crossfit
# rules are a benchmark study, ``bench/bd_variants.py``):
#
# * ``agreement``       the paper: in-sample agreement, one score per unit;
# * ``crossfit``        agreement under a snapshot that never trained on the unit: K
#                       snapshots, snapshot f trained on every unit whose fold ≠ f
#                       (``crossfit_folds``: by view or by shape), scores fold f's units;
# * ``point``           per (point, unit) pair: the snapshot's probability of the unit's
#                       label at the point (in-sample), so the wrong points inside a right
#                       box (box bleed) lose weight, not the whole box;
# * ``crossfit_point``  the same with the cross-fitted snapshots' probabilities.
#
# Per-pair rules store, per unit, score = the mean probability over its points (the soft
# agreement) and a relative weight per pair (its probability / that mean, mean 1 over
# the unit), so the loss weight of pair (i, k) is the probability itself, while the score
# table keeps one meaningful score per unit.


SNAPSHOT_RULES = ("agreement", "point", "crossfit", "crossfit_point")
"""The rules ``rescore_rule`` computes per shape; ``<rule>_balanced`` is one of them followed
by ``balance_part_mass`` over the corpus. The crossfit ones are a benchmark study
(``bench/bd_variants.py``); ``train.rescore`` offers ``RESCORE_RULES``."""


def _unit_of_pair(units: KnowledgeUnits) -> np.ndarray:
    return np.repeat(np.arange(len(units)), np.diff(units.offsets)).astype(np.int64)


def unit_precision(units: KnowledgeUnits, labels: np.ndarray) -> np.ndarray:
    """The oracle score: the share of each unit's points whose true label is the unit's.

    labels: (N,) int64 ground truth → (K,) float32 (an empty unit scores 0). Not a method
    (it reads the truth): the upper bound of any unit re-scoring rule, for benchmarks.
    """
    hits, sizes = unit_hits(units, labels)
    return np.where(sizes > 0, hits / np.maximum(sizes, 1), 0.0).astype(np.float32)


def pair_probability(units: KnowledgeUnits, prob: np.ndarray) -> np.ndarray:
    """Each (point, unit) pair's probability of the unit's label under a snapshot.

    prob: (N, P) float, the snapshot's per-point distribution over the category's parts
    → (M,) float32 aligned with ``units.point_idx``: prob[point_idx[m], label of m's unit].
    """
    prob = np.asarray(prob)
    if prob.ndim != 2:
        raise ValueError(f"prob must be (N, P), got shape {prob.shape}")
    if len(units.point_idx) and int(units.point_idx.max()) >= len(prob):
        raise ValueError(f"units of {units.shape_id} cover point {int(units.point_idx.max())}, prob has {len(prob)}")
    if len(units) and int(units.label.max()) >= prob.shape[1]:
        raise ValueError(f"units of {units.shape_id} have label {int(units.label.max())}, prob has {prob.shape[1]}")
    return prob[units.point_idx, units.label[_unit_of_pair(units)]].astype(np.float32)


def pair_probability_reference(units: KnowledgeUnits, prob: np.ndarray) -> np.ndarray:
    """Slow reference of ``pair_probability``: one unit and one point at a time."""
    out = [float(prob[i, units.label[k]]) for k in range(len(units)) for i in units.unit_points(k)]
    return np.asarray(out, np.float32)


def split_pair_weights(units: KnowledgeUnits, pair: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pair weights → (unit score, relative pair weight) whose product is ``pair``.

    pair: (M,) float in [0, 1] → (score (K,) float32 = the mean of the unit's pair weights,
    0 for an empty unit; relative (M,) float32 = pair / its unit's score, 1 where that is 0).
    """
    pair = np.asarray(pair, np.float64)
    if pair.shape != units.point_idx.shape:
        raise ValueError(f"pair weights {pair.shape} must align with point_idx {units.point_idx.shape}")
    sizes = np.diff(units.offsets)
    unit = _unit_of_pair(units)
    score = np.bincount(unit, weights=pair, minlength=len(units)) / np.maximum(sizes, 1)
    s = score[unit]
    relative = np.where(s > 0, pair / np.where(s > 0, s, 1.0), 1.0)
    return score.astype(np.float32), relative.astype(np.float32)


def crossfit_folds(units: KnowledgeUnits, folds: int, by: str, seed: int = 0) -> np.ndarray:
    """The fold of each unit for cross-fitted re-scoring.

    by="view": each (shape, view) draws its fold, so every fold keeps about (K−1)/K of
    each shape's views; by="shape": the whole shape is in one fold (snapshot f never saw
    the shape). Depends on (seed, shape id, view) only: every worker and every round
    agrees without communication. → (K_units,) int64 in [0, folds).
    """
    if folds < 2:
        raise ValueError(f"crossfit folds={folds} must be >= 2")
    if by not in ("view", "shape"):
        raise ValueError(f"crossfit by={by!r} is not one of view, shape")
    key = [int(seed), *units.shape_id.encode()]
    if by == "shape":
        return np.full(len(units), int(np.random.default_rng(key).integers(folds)), np.int64)
    views = units.view.astype(np.int64)
    # A seeded permutation of the shape's views dealt round-robin: balanced folds per shape.
    uniq = np.unique(views)
    order = np.random.default_rng(key).permutation(len(uniq))
    fold_of_view = dict(zip(uniq[order].tolist(), (np.arange(len(uniq)) % folds).tolist()))
    return np.array([fold_of_view[v] for v in views.tolist()], np.int64)


def crossfit_select(units: KnowledgeUnits, per_fold: list[np.ndarray], fold: np.ndarray) -> np.ndarray:
    """Pick, for each unit (or each of its pairs), the value from the snapshot of its fold.

    per_fold: F arrays, each (K,) per unit or (M,) per pair, from snapshot f · fold: (K,)
    int64 → the same shape as per_fold[0]: unit k's entries from per_fold[fold[k]].
    """
    stack = np.stack([np.asarray(a) for a in per_fold])
    if len(fold) != len(units) or int(fold.max(initial=0)) >= len(per_fold):
        raise ValueError(f"fold {fold.shape} must give each of {len(units)} units one of {len(per_fold)} snapshots")
    if stack.shape[1] == len(units.point_idx) and stack.shape[1] != len(units):
        idx = fold[_unit_of_pair(units)]
    elif stack.shape[1] == len(units):
        idx = fold
    else:
        raise ValueError(f"per-fold arrays of length {stack.shape[1]} match neither K nor M")
    return stack[idx, np.arange(stack.shape[1])]


def rescore_rule(
    rule: str,
    units: KnowledgeUnits,
    probs: list[np.ndarray],
    fold: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """New scores of one shape's units under ``rule`` (see the section comment above).

    probs: the snapshots' per-point distributions over the category's parts, (N, P) each:
    one (the in-sample snapshot) for ``agreement``/``point``, F for the crossfit rules,
    probs[f] from the snapshot that never trained on fold f · fold: (K,) int64, each
    unit's fold (crossfit rules) → (score (K,) float32, relative pair weight (M,) float32
    or None for the unit rules).
    """
    cross = rule.startswith("crossfit")
    if rule not in SNAPSHOT_RULES:
        raise ValueError(f"re-scoring rule {rule!r} is unknown (one of {SNAPSHOT_RULES})")
    if cross and (fold is None or len(probs) < 2):
        raise ValueError(f"rule {rule!r} needs >= 2 snapshots and each unit's fold")
    if not cross and len(probs) != 1:
        raise ValueError(f"rule {rule!r} takes one snapshot, got {len(probs)}")
    if rule in ("agreement", "crossfit"):
        scores = [rescore(units, np.asarray(p).argmax(1)).score for p in probs]
        return (crossfit_select(units, scores, fold) if cross else scores[0]).astype(np.float32), None
    pairs = [pair_probability(units, p) for p in probs]
    pair = crossfit_select(units, pairs, fold) if cross else pairs[0]
    return split_pair_weights(units, pair)


def rescore_rule_reference(
    rule: str,
    units: KnowledgeUnits,
    probs: list[np.ndarray],
    fold: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Slow reference of ``rescore_rule``: loops over units and points."""
    score, relative = [], []
    for k in range(len(units)):
        p = probs[int(fold[k])] if rule.startswith("crossfit") else probs[0]
        pts = units.unit_points(k)
        y = int(units.label[k])
        if rule in ("agreement", "crossfit"):
            agree = sum(1 for i in pts if int(np.argmax(p[i])) == y)
            score.append(agree / len(pts) if len(pts) else 0.0)
            continue
        w = [float(p[i, y]) for i in pts]
        mean = sum(w) / len(w) if w else 0.0
        score.append(mean)
        relative += [x / mean if mean > 0 else 1.0 for x in w]
    rel = None if rule in ("agreement", "crossfit") else np.asarray(relative, np.float32)
    return np.asarray(score, np.float32), rel


def balance_part_mass(
    labels: list[np.ndarray], sizes: list[np.ndarray], old: list[np.ndarray], new: list[np.ndarray]
) -> list[np.ndarray]:
    """New scores rescaled per part label so each label keeps its old score mass.

    Re-scoring by precision or agreement takes most weight from the units of small parts
    (their boxes hold the most foreign points), which shifts the class balance the loss
    was trained with. Per label y over every unit of the corpus (or of one category):
    s'_k = s_k · Σ_{j: y_j = y} c_j |j| / Σ_{j: y_j = y} s_j |j|, so the rule still ranks the
    units of a part against each other but every part keeps its share of the loss.

    Per shape (all lists aligned): labels (K,) int64 (pass a (category, part) code when
    shapes of several categories mix) · sizes (K,) points per unit · old (K,) teacher
    scores · new (K,) the rule's scores → the rescaled new scores, (K,) float32 each,
    clipped to [0, 1] (a label whose new mass is 0 keeps its zeros).
    """
    if not (len(labels) == len(sizes) == len(old) == len(new)):
        raise ValueError("balance_part_mass: labels, sizes, old and new must have one array per shape")
    lab = np.concatenate([np.asarray(x, np.int64) for x in labels]) if labels else np.zeros(0, np.int64)
    size = np.concatenate([np.asarray(x, np.float64) for x in sizes]) if sizes else np.zeros(0)
    o = np.concatenate([np.asarray(x, np.float64) for x in old]) if old else np.zeros(0)
    n = np.concatenate([np.asarray(x, np.float64) for x in new]) if new else np.zeros(0)
    if not (lab.shape == size.shape == o.shape == n.shape):
        raise ValueError("balance_part_mass: per-shape arrays differ in length")
    uniq, inv = np.unique(lab, return_inverse=True)
    old_mass = np.bincount(inv, weights=o * size, minlength=len(uniq))
    new_mass = np.bincount(inv, weights=n * size, minlength=len(uniq))
    factor = np.where(new_mass > 0, old_mass / np.where(new_mass > 0, new_mass, 1.0), 1.0)
    out = np.clip(n * factor[inv], 0.0, 1.0).astype(np.float32)
    return np.split(out, np.cumsum([len(x) for x in new])[:-1]) if new else []


def balance_part_mass_reference(
    labels: list[np.ndarray], sizes: list[np.ndarray], old: list[np.ndarray], new: list[np.ndarray]
) -> list[np.ndarray]:
    """Slow reference of ``balance_part_mass``: dictionaries and loops."""
    old_mass: dict[int, float] = {}
    new_mass: dict[int, float] = {}
    for lab, size, o, n in zip(labels, sizes, old, new):
        for y, m, a, b in zip(lab, size, o, n):
            old_mass[int(y)] = old_mass.get(int(y), 0.0) + float(a) * float(m)
            new_mass[int(y)] = new_mass.get(int(y), 0.0) + float(b) * float(m)
    out = []
    for lab, n in zip(labels, new):
        row = []
        for y, b in zip(lab, n):
            f = old_mass[int(y)] / new_mass[int(y)] if new_mass[int(y)] > 0 else 1.0
            row.append(min(max(float(b) * f, 0.0), 1.0))
        out.append(np.asarray(row, np.float32))
    return out
