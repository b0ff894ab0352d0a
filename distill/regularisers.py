"""Loss terms beside forward distillation: superpoint consistency and online self-training.

``regulariser(cfg, model, average, space, total_steps)`` builds the ``ExtraLoss`` a fit adds
to every step (``distill.passes.train_epoch``), or None when both are off:

* ``train.superpoint_consistency`` (β): β · ``distill.losses.superpoint_consistency`` over
  the batch's superpoints (the samples carry them, ``cluster.training.samples.Tables.superpoints``).
* ``train.mean_teacher`` (α): online self-training in the mean-teacher form (Tarvainen &
  Valpola 2017; GGSD applies it to 3D part distillation). The teacher is the student's
  weight average (``distill.ema.WeightAverage``, ``train.ema``); on each batch it predicts
  under ``no_grad`` (train mode, its own dropout draw, its BatchNorm batch statistics,
  the running statistics untouched), and every point where its probability max is ≥
  ``train.mean_teacher_threshold`` becomes a hard target:
  α · r(t) · ``distill.losses.confident_target_loss``, r ramping linearly 0 → 1 over the
  first half of the fit's steps (the average is near-random at first).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from distill.config import TrainConfig
from distill.ema import WeightAverage
from distill.labels import LabelSpace
from distill.losses import confident_target_loss, superpoint_consistency
from distill.passes import ExtraLoss, forward_logits, unwrap
from distill.samples import Batch


def teacher_probs(
    model: nn.Module, average: WeightAverage, batch: Batch, space: LabelSpace, rotation: Tensor | None
) -> Tensor:
    """(B, N, S) the weight average's probabilities on ``batch``, without gradient; the
    model's own weights and buffers are not touched (a functional call)."""
    with torch.no_grad():
        logits = forward_logits(unwrap(model), batch, space, rotation, weights=average.shadow)
        return torch.softmax(logits.float(), dim=-1)


def regulariser(
    cfg: TrainConfig, model: nn.Module, average: WeightAverage | None, space: LabelSpace, total_steps: int
) -> ExtraLoss | None:
    """The fit's extra loss (module docstring), or None when no term is on."""
    beta, alpha = cfg.superpoint_consistency, cfg.mean_teacher
    if beta <= 0 and alpha <= 0:
        return None
    if alpha > 0 and average is None:
        raise ValueError("train.mean_teacher needs the weight average (train.ema > 0)")
    ramp = max(1, total_steps // 2)

    def extra(logits: Tensor, batch: Batch, rotation: Tensor | None) -> Tensor:
        loss = logits.new_zeros(())
        if beta > 0:
            if batch.superpoints is None:
                raise ValueError(
                    f"train.superpoint_consistency: the batch of {batch.shape_ids[:3]} carries no superpoints"
                )
            loss = loss + beta * superpoint_consistency(logits, batch.superpoints)
        if alpha > 0 and average is not None:
            weight = alpha * min(1.0, average.steps / ramp)
            if weight > 0:
                probs = teacher_probs(model, average, batch, space, rotation)
                loss = loss + weight * confident_target_loss(logits, probs, cfg.mean_teacher_threshold)
        return loss

    return extra
