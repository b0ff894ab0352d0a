"""The forward-distillation loss (docs/design.md §3) and its per-batch class weights.

Loss. For point i covered by the set U_i of knowledge units (unit k: label y_k, score c_k),

    ℓ_i = (1 / |U_i|) · Σ_{k ∈ U_i} c_k · w(y_k) · CE(z_i, y_k),      ℓ_i = 0 if U_i = ∅,
    L   = (1 / T) · Σ_i ℓ_i      over all T points of the batch (uncovered ones count in T).

Class weights, our reading of the official code (``util.get_class_weight(opt=1)`` and
``model/loss.py``, ardianumam/PartDistill):

* the unit of counting is a (point, unit) *coverage pair* of the batch: a point covered by
  three units counts three times; ``n_c`` = pairs whose unit has label c, i.e.
  Σ_{k: y_k = c} |k| over the batch's units;
* ``total`` = Σ_c n_c, all coverage pairs of the batch, whatever their label;
* ``P`` = the number of parts of the category (the code's ``n_part``), present in the batch
  or not;
* r_c = total / (P · n_c), w_c = clip(1 + log₄ r_c, 1, 4); a label with n_c = 0 gets 4
  (r = ∞, as in the code) but no unit uses it, so it never matters;
* coverage, not score, decides what counts: the code masks with ``conf_bbox > 0`` from the
  teacher, and after backward distillation keeps that mask and the weights while the new
  scores only multiply the loss. So a unit re-scored to 0 still counts in n_c and in |U_i|;
* ``CE(..., weight=w, reduction='none')`` multiplies each term by w(y) without
  renormalising, and ``|U_i|`` is the number of covering units (clamped to ≥ 1).

With several categories in one student (a head over the union of part slots) the weights
are computed per category: ``total``, ``P`` and ``n_c`` are taken within the category's
slots (``slot_group``), which reduces exactly to the above for one category.

Units arrive as flat arrays with offsets, as ``KnowledgeUnits`` stores them: unit k
covers ``point_idx[offsets[k]:offsets[k+1]]``, with point indices into the flattened batch
(element b's point i is ``b·N + i``).

Per-pair weights (``pair_weight``, optional, (M,) aligned with ``point_idx``): a point-level
re-scoring rule (``distill.rescore``) may weight each (point, unit) pair on its own; the
term of pair (i, k) is then multiplied by m_ik. Like the scores, they only multiply the
loss: class weights and |U_i| still count every pair.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

MAX_WEIGHT = 4.0


def _check_units(num_points: int, point_idx: Tensor, offsets: Tensor, unit_label: Tensor, unit_score: Tensor) -> None:
    k = unit_label.shape[0]
    if unit_score.shape != (k,) or offsets.shape != (k + 1,):
        raise ValueError(
            f"units: unit_label {tuple(unit_label.shape)}, unit_score {tuple(unit_score.shape)} and "
            f"offsets {tuple(offsets.shape)} must be (K,), (K,), (K + 1,)"
        )
    if int(offsets[-1]) != point_idx.shape[0]:
        raise ValueError(f"offsets end at {int(offsets[-1])}, point_idx has {point_idx.shape[0]} entries")
    if point_idx.numel() and (int(point_idx.min()) < 0 or int(point_idx.max()) >= num_points):
        raise ValueError(f"point_idx outside [0, {num_points}) (the batch's points)")


def pair_counts(unit_label: Tensor, unit_size: Tensor, num_slots: int) -> Tensor:
    """n_c: the (point, unit) coverage pairs of each slot. unit_label: (K,) int64 slot of
    each unit · unit_size: (K,) points each unit covers → (S,) float64."""
    if unit_label.shape != unit_size.shape:
        raise ValueError(f"unit_label {tuple(unit_label.shape)} and unit_size {tuple(unit_size.shape)} differ")
    n = torch.zeros(num_slots, dtype=torch.float64, device=unit_label.device)
    return n.index_add_(0, unit_label.long(), unit_size.to(torch.float64))


def class_weights(unit_label: Tensor, unit_size: Tensor, num_slots: int, slot_group: Tensor | None = None) -> Tensor:
    """Per-batch class weights w_c = clip(1 + log₄(total / (P · n_c)), 1, 4).

    unit_label: (K,) int64 slot of each unit · unit_size: (K,) number of points each unit
    covers · slot_group: (S,) int64 category of each slot (None: one category, P = S)
    → (S,) float32. See the module docstring for what n_c, total and P count.
    """
    return weights_from_counts(pair_counts(unit_label, unit_size, num_slots), slot_group)


def weights_from_counts(n: Tensor, slot_group: Tensor | None = None) -> Tensor:
    """w_c = clip(1 + log₄(total / (P · n_c)), 1, 4) from the pair counts n: (S,) of a batch
    or of a whole corpus (``train.class_weights=corpus``) → (S,) float32."""
    num_slots, device = n.shape[0], n.device
    n = n.to(torch.float64)
    if slot_group is None:
        slot_group = torch.zeros(num_slots, dtype=torch.long, device=device)
    if slot_group.shape != (num_slots,):
        raise ValueError(f"slot_group {tuple(slot_group.shape)} must be ({num_slots},)")
    groups = int(slot_group.max()) + 1 if num_slots else 0
    total = torch.zeros(groups, dtype=torch.float64, device=device).index_add_(0, slot_group, n)
    parts = torch.bincount(slot_group, minlength=groups).to(torch.float64)
    ratio = total[slot_group] / (parts[slot_group] * n)  # n = 0 → inf → clipped to 4
    w = 1.0 + torch.log(ratio) / math.log(4.0)
    w = torch.where(n > 0, w, torch.full_like(w, MAX_WEIGHT))
    return w.clamp(1.0, MAX_WEIGHT).to(torch.float32)


def distillation_loss(
    logits: Tensor,
    point_idx: Tensor,
    offsets: Tensor,
    unit_label: Tensor,
    unit_score: Tensor,
    class_weight: Tensor | None = None,
    slot_group: Tensor | None = None,
    pair_weight: Tensor | None = None,
) -> Tensor:
    """The forward-distillation loss of one batch (vectorised).

    logits: (B, N, S) or (T, S) float · point_idx: (M,) int64 into the T = B·N flattened
    points · offsets: (K + 1,) int64 · unit_label: (K,) int64 in [0, S) · unit_score: (K,)
    float · class_weight: (S,) (None: ``class_weights`` of this batch) · slot_group: (S,),
    see ``class_weights`` · pair_weight: (M,) float per (point, unit) pair, or None (all 1)
    → scalar. Logits of slots a point may not take (other categories') should already be
    masked to a large negative value.
    """
    if logits.dim() == 3:
        logits = logits.reshape(-1, logits.shape[-1])
    if logits.dim() != 2:
        raise ValueError(f"logits must be (B, N, S) or (T, S), got shape {tuple(logits.shape)}")
    t, s = logits.shape
    _check_units(t, point_idx, offsets, unit_label, unit_score)
    if unit_label.numel() and (int(unit_label.min()) < 0 or int(unit_label.max()) >= s):
        raise ValueError(f"unit_label outside [0, {s}) (the logit slots)")
    if pair_weight is not None and pair_weight.shape != point_idx.shape:
        raise ValueError(f"pair_weight {tuple(pair_weight.shape)} must be (M,) = {tuple(point_idx.shape)}")
    sizes = offsets[1:] - offsets[:-1]
    if class_weight is None:
        class_weight = class_weights(unit_label, sizes, s, slot_group)
    if point_idx.numel() == 0:
        return logits.sum() * 0.0  # keeps the graph (and DDP's gradient hooks) alive
    unit_of_pair = torch.repeat_interleave(torch.arange(len(sizes), device=logits.device), sizes)
    label = unit_label[unit_of_pair]
    covering = torch.bincount(point_idx, minlength=t).clamp_min(1)  # |U_i|
    logp = F.log_softmax(logits.float(), dim=-1)
    # (M,) CE of each (point, unit) pair; index_select keeps the backward deterministic.
    nll = -logp.reshape(-1).index_select(0, point_idx * s + label)
    weight = unit_score[unit_of_pair].float() * class_weight[label] / covering[point_idx]
    if pair_weight is not None:
        weight = weight * pair_weight.float()
    return (nll * weight).sum() / t


def distillation_loss_reference(
    logits: Tensor,
    point_idx: Tensor,
    offsets: Tensor,
    unit_label: Tensor,
    unit_score: Tensor,
    class_weight: Tensor | None = None,
    slot_group: Tensor | None = None,
    pair_weight: Tensor | None = None,
) -> Tensor:
    """Slow reference of ``distillation_loss``: explicit loops over points and units.

    Class weights, when not given, are counted with plain Python loops as well.
    """
    if logits.dim() == 3:
        logits = logits.reshape(-1, logits.shape[-1])
    t, s = logits.shape
    pts = [int(p) for p in point_idx]
    offs = [int(o) for o in offsets]
    labels = [int(y) for y in unit_label]
    members = [pts[offs[k] : offs[k + 1]] for k in range(len(labels))]
    pw = [1.0] * len(pts) if pair_weight is None else [float(x) for x in pair_weight]
    pair_w = [pw[offs[k] : offs[k + 1]] for k in range(len(labels))]
    if class_weight is None:
        group = [0] * s if slot_group is None else [int(g) for g in slot_group]
        n = [0] * s
        for k, y in enumerate(labels):
            n[y] += len(members[k])
        w = []
        for c in range(s):
            same = [d for d in range(s) if group[d] == group[c]]
            total = sum(n[d] for d in same)
            if n[c] == 0:
                w.append(MAX_WEIGHT)
                continue
            r = total / (len(same) * n[c])
            w.append(min(max(1.0 + math.log(r, 4), 1.0), MAX_WEIGHT))
        class_weight = torch.tensor(w)
    total_loss = logits.new_zeros(())
    for i in range(t):
        covering = [(k, j) for k in range(len(labels)) for j, p in enumerate(members[k]) if p == i]
        if not covering:
            continue  # uncovered: adds 0 but counts in T
        z = logits[i]
        li = logits.new_zeros(())
        for k, j in covering:
            ce = -(z[labels[k]] - torch.logsumexp(z, 0))
            li = li + float(unit_score[k]) * float(class_weight[labels[k]]) * pair_w[k][j] * ce
        total_loss = total_loss + li / len(covering)
    return total_loss / t


def superpoint_consistency(logits: Tensor, superpoints: Tensor) -> Tensor:
    """The consistency term (``train.superpoint_consistency``): each point's cross-entropy
    against its superpoint's mean predicted distribution q̄_j (held fixed, no gradient),

        L_sp = (1 / T) · Σ_i −Σ_c q̄_{j(i)}(c) · log p_i(c),

    over all T points of the batch, covered or not. logits: (B, N, S) or (T, S) ·
    superpoints: (T,) int64 ids unique within the batch → scalar."""
    logits = logits.reshape(-1, logits.shape[-1])
    if superpoints.shape != (logits.shape[0],):
        raise ValueError(f"superpoints {tuple(superpoints.shape)} must be ({logits.shape[0]},), one id per point")
    logp = F.log_softmax(logits.float(), dim=-1)
    with torch.no_grad():
        sp = superpoints.long()
        count = torch.bincount(sp).clamp_min(1).to(logp.dtype)
        mean = torch.zeros(len(count), logp.shape[1], dtype=logp.dtype, device=logp.device)
        mean.index_add_(0, sp, logp.exp())
        target = (mean / count[:, None]).index_select(0, sp)
    return -(target * logp).sum(-1).mean()


def confident_target_loss(logits: Tensor, teacher_probs: Tensor, threshold: float) -> Tensor:
    """Online self-training (``train.mean_teacher``): cross-entropy against the teacher's
    argmax at every point whose teacher probability max ≥ ``threshold``, averaged over all
    T points. logits, teacher_probs: (B, N, S) or (T, S) → scalar."""
    logits = logits.reshape(-1, logits.shape[-1])
    teacher_probs = teacher_probs.reshape(-1, teacher_probs.shape[-1])
    if teacher_probs.shape != logits.shape:
        raise ValueError(f"teacher_probs {tuple(teacher_probs.shape)} and logits {tuple(logits.shape)} differ")
    confidence, target = teacher_probs.max(-1)
    nll = F.cross_entropy(logits.float(), target, reduction="none")
    return (nll * (confidence >= threshold).to(nll.dtype)).mean()
