"""Single passes over samples, the pieces ``distil`` (``distill.training``) is made of:
one training epoch, BatchNorm re-calibration, prediction and evaluation.

Nothing here knows about Ray, files or rounds; the caller passes the model (wrapped in
DDP or not), the batches or samples and the label space.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from distill.augment import augment
from distill.config import TrainConfig
from distill.labels import LabelSpace, mask_logits
from distill.losses import distillation_loss, pair_counts, weights_from_counts
from distill.metrics import MIoUTable
from distill.records import Shape
from distill.samples import Batch, ShapeSample, collate, prepare_sample, size_batches
from distill.sources import category_quota, stratified


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under a DDP / FSDP-style wrapper (its state dict has no ``module.``)."""
    return getattr(model, "module", model)


def make_optimizer(
    model: nn.Module, cfg: TrainConfig, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Adam at ``train.lr`` over the trainable weights (a frozen encoder's are not), with a
    per-step cosine decay to ``train.lr_min`` over all epochs, after
    ``train.warmup_steps`` of linear warm-up from ``lr / warmup_steps``."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return opt, warmup_cosine(opt, cfg.epochs * steps_per_epoch, cfg.warmup_steps, cfg.lr_min / cfg.lr)


def warmup_cosine(
    opt: torch.optim.Optimizer, total_steps: int, warmup_steps: int, floor: float
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule: linear warm-up over ``warmup_steps``, then a cosine decay of the
    learning rate to ``floor`` × its initial value at ``total_steps``."""
    total = max(1, total_steps)
    if warmup_steps == 0:
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=floor * opt.defaults["lr"])
    warm = max(1, min(warmup_steps, total - 1))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def pose_rotations(model: nn.Module, batch: Batch) -> Tensor | None:
    """The pose of each shape of a batch of raw (un-augmented) clouds, for a student that
    aligns poses (``student.align=cube``): (B,) int64, chosen once per shape and then
    remembered (``PoseAligned.shape_rotations``); None for any other student."""
    pick = getattr(unwrap(model), "shape_rotations", None)
    return pick(batch.points, batch.category) if callable(pick) else None


def forward_logits(
    model: nn.Module,
    batch: Batch,
    space: LabelSpace,
    rotation: Tensor | None = None,
    weights: dict[str, Tensor] | None = None,
) -> Tensor:
    """(B, N, S) logits of a batch, masked to each element's category.

    rotation: (B,) the shapes' poses (``pose_rotations`` of the raw batch), or None: a
    pose-aligning student then chooses on ``batch.points`` as they are · weights: run
    ``model`` with these parameters instead of its own (``torch.func.functional_call``;
    its buffers are used as copies, so BatchNorm's running statistics stay as they are)."""
    extra = {} if rotation is None else {"rotation": rotation.to(batch.points.device, non_blocking=True)}
    kwargs = {"normals": batch.normals, "category": batch.category, **extra}
    if weights is None:
        logits = model(batch.points, **kwargs)
    else:
        state = {**{k: b.clone() for k, b in model.named_buffers()}, **weights}
        logits = torch.func.functional_call(model, state, (batch.points,), kwargs)
    if logits.shape[-1] != space.num_slots:
        raise ValueError(f"model gives {logits.shape[-1]} logits per point, the label space has {space.num_slots}")
    return mask_logits(logits, batch.category, space)


ExtraLoss = Callable[[Tensor, Batch, "Tensor | None"], Tensor]
"""A term added to a training step's loss: ``(logits (B, N, S), batch, rotation) → scalar``."""

AMP_MODES = ("none", "bf16")


def autocast(device: torch.device | str, amp: str = "none") -> torch.autocast:
    """The autocast context of ``train.amp``: bf16 on the device's type, or disabled."""
    if amp not in AMP_MODES:
        raise ValueError(f"amp={amp!r} is not one of {AMP_MODES}")
    dev = torch.device(device)
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp == "bf16")


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    batches: Iterable[Batch],
    device: torch.device | str,
    space: LabelSpace,
    generator: torch.Generator | None = None,
    grad_clip: float = 0.0,
    amp: str = "none",
    class_weight: Tensor | None = None,
    after_step: Callable[[], None] | None = None,
    extra_loss: ExtraLoss | None = None,
) -> dict[str, float]:
    """One pass over ``batches``; the scheduler steps after every optimiser step.

    generator: draws the augmentation (None: no augmentation) · amp: ``train.amp``, the
    forward's autocast ("none" | "bf16"; the geometry stays float32, the loss is computed
    in float32) · class_weight: (S,) the loss's class weights (None: each batch's own) ·
    after_step: called after every optimiser step (the weight average's update) ·
    extra_loss: ``(logits, batch, rotation) → scalar`` added to the distillation loss
    (``distill.regularisers``) → {"loss": mean batch loss, "steps", "shapes", "seconds"}.
    """
    model.train()
    slot_group = space.slot_group().to(device)
    losses, shapes, start = [], 0, time.perf_counter()
    first_batch_at = float("nan")
    for batch in batches:
        if not losses:
            first_batch_at = time.time()  # wall clock: compared with the driver's (bench/scale.py)
        rotation = pose_rotations(model, batch)  # on the raw clouds, before augmentation
        batch = batch.to(device)
        if generator is not None:
            batch.points, batch.normals = augment(batch.points, generator, batch.normals)
        with autocast(batch.points.device, amp):
            logits = forward_logits(model, batch, space, rotation)
        loss = distillation_loss(
            logits.float(),
            batch.point_idx,
            batch.unit_offsets,
            batch.unit_slot,
            batch.unit_score,
            class_weight=class_weight,
            slot_group=slot_group,
            pair_weight=batch.pair_weight,
        )
        if extra_loss is not None:
            loss = loss + extra_loss(logits.float(), batch, rotation)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if after_step is not None:
            after_step()
        losses.append(float(loss.detach()))
        shapes += batch.points.shape[0]
    return {
        "loss": float(np.mean(losses)) if losses else float("nan"),
        "steps": float(len(losses)),
        "shapes": float(shapes),
        "seconds": time.perf_counter() - start,
        "first_batch_at": first_batch_at,
    }


def corpus_class_weights(samples: Sequence[ShapeSample], space: LabelSpace) -> Tensor:
    """The loss's class weights from the (point, unit) pairs of ``samples`` (the source's
    ``class_count_samples``) instead of one batch's → (S,) float32."""
    n = torch.zeros(space.num_slots, dtype=torch.float64)
    for s in samples:
        n += pair_counts(s.unit_slot, s.unit_offsets[1:] - s.unit_offsets[:-1], space.num_slots)
    return weights_from_counts(n, space.slot_group())


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module,
    samples: Sequence[ShapeSample],
    device: torch.device | str,
    space: LabelSpace,
    batch_size: int = 8,
    max_shapes: int = 64,
) -> None:
    """Re-estimate every BatchNorm's running statistics with the current weights.

    BatchNorm's running averages trail the weights (momentum 0.1 over the ~10² steps a
    small corpus gives, at lr 3e-3), and eval-mode predictions from stale statistics can
    collapse to one part although train-mode ones are right (measured: 94 vs 15 mIoU on
    the synthetic test shapes). So before every prediction that matters (re-scoring,
    validation, the final model) the statistics are recomputed as the plain average over
    un-augmented ``samples`` ("precise BN"), dropout off: at most ``max_shapes`` of them,
    shared by the categories (``distill.sources.stratified``: statistics of one category
    are wrong for the others; 64 × 2048 points estimate a mean and variance per channel
    well, and cap the cost at a fraction of an epoch on large corpora). Runs on
    the unwrapped model (no DDP collectives); deterministic, so all workers agree.
    """
    bare = unwrap(model)
    norms = [m for m in bare.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or not samples:
        return
    was_training = bare.training
    momenta = [m.momentum for m in norms]
    bare.train()
    for m in bare.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    if len(samples) > max_shapes:  # the sources' rule: every category keeps its share
        quota = category_quota(max_shapes, len({s.category for s in samples}))
        samples = stratified([samples], lambda part: part, quota)
    by_n: dict[int, list[ShapeSample]] = {}
    for s in samples:
        by_n.setdefault(s.num_points, []).append(s)
    for group in by_n.values():
        for start in range(0, len(group), batch_size):
            batch = collate(group[start : start + batch_size])
            forward_logits(bare, batch.to(device), space, pose_rotations(bare, batch))
    for m, mom in zip(norms, momenta):
        m.momentum = mom
    bare.train(was_training)


@torch.no_grad()
def predict_samples(
    model: nn.Module, samples: Sequence[ShapeSample], device: torch.device | str, space: LabelSpace, batch_size: int = 8
) -> list[np.ndarray]:
    """Per sample, the student's part label of every point: (N,) int64 in the category's
    own label indices. Eval mode, no augmentation; samples of equal N are batched. Runs
    the unwrapped model: no DDP collectives, so workers may predict different shapes."""
    out: list[np.ndarray | None] = [None] * len(samples)
    off = space.offsets
    for chunk, logits in eval_logits(model, samples, device, space, batch_size):
        pred = logits.argmax(-1).cpu().numpy()
        for row, i in enumerate(chunk):
            out[i] = pred[row] - off[samples[i].category]
    return out  # type: ignore[return-value]


@torch.no_grad()
def eval_logits(
    model: nn.Module, samples: Sequence[ShapeSample], device: torch.device | str, space: LabelSpace, batch_size: int
) -> Iterator[tuple[list[int], Tensor]]:
    """The unwrapped model in eval mode over equal-size batches of ``samples`` → per batch
    (the samples' indices, logits (b, N, S) masked to each sample's category); the model's
    mode is restored when the iteration ends."""
    bare = unwrap(model)
    was_training = bare.training
    bare.eval()
    try:
        for chunk in size_batches(samples, batch_size):
            batch = collate([samples[i] for i in chunk])
            yield chunk, forward_logits(bare, batch.to(device), space, pose_rotations(bare, batch))
    finally:
        bare.train(was_training)


def _space_for(shapes: Sequence[Shape], space: LabelSpace | None) -> LabelSpace:
    if space is not None:
        return space
    space = LabelSpace.from_shapes(shapes)
    if space.num_categories > 1:
        raise ValueError(f"shapes of several categories {list(space.categories)}: pass the student's LabelSpace")
    return space


def predict(
    model: nn.Module,
    shapes: Sequence[Shape],
    device: torch.device | str,
    batch_size: int = 8,
    space: LabelSpace | None = None,
) -> list[np.ndarray]:
    """Part labels per shape, (N,) int64 each, in the shape's own part indices.

    space: the student's label space (may be omitted for a one-category student when all
    shapes are of that category).
    """
    return [lp.argmax(1).astype(np.int64) for lp in predict_log_probs(model, shapes, device, batch_size, space)]


@torch.no_grad()
def predict_log_probs(
    model: nn.Module,
    shapes: Sequence[Shape],
    device: torch.device | str,
    batch_size: int = 8,
    space: LabelSpace | None = None,
) -> list[np.ndarray]:
    """Per shape, the student's log-probability of each of its category's parts at each
    point: (N, P) float32, columns in the shape's own part indices (see ``predict``)."""
    space = _space_for(shapes, space)
    samples = [prepare_sample(s, None, space) for s in shapes]
    out: list[np.ndarray | None] = [None] * len(samples)
    for chunk, logits in eval_logits(model, samples, device, space, batch_size):
        for row, i in enumerate(chunk):
            c = samples[i].category
            own = logits[row, :, space.offsets[c] : space.offsets[c + 1]].float()
            out[i] = torch.log_softmax(own, dim=-1).cpu().numpy()
    return out  # type: ignore[return-value]


def evaluate(
    model: nn.Module,
    shapes: Sequence[Shape],
    device: torch.device | str,
    batch_size: int = 8,
    space: LabelSpace | None = None,
) -> MIoUTable:
    """mIoU of the student on the labelled ``shapes`` (shapes without labels are skipped)."""
    labelled = [s for s in shapes if s.labels is not None]
    table = MIoUTable()
    if not labelled:
        return table
    for s, pred in zip(labelled, predict(model, labelled, device, batch_size, space)):
        table.add(s.shape_id, s.category, pred, s.labels, s.num_parts)  # type: ignore[arg-type]
    return table
