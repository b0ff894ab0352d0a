"""The distillation training loop, written once as plain functions (DESIGN §3, §5.1).

Nothing here knows about Ray or files: the caller (a plain script, or the Ray Train
wrapper in ``cluster/``) builds the model, passes it in (already wrapped in DDP if it
likes), gives it a ``SampleSource`` (``distill.sources``) and receives epochs,
checkpoints and re-scored units through callbacks.

* ``distill.labels.LabelSpace``: the logit slots of one student.
* ``distill.samples``: ``ShapeSample`` / ``prepare_sample``, ``collate`` → ``Batch``.
* here: ``train_epoch``, ``predict``, ``evaluate`` (one pass each), and ``distil``:
  forward distillation, ``train.bd_rounds`` rounds of backward distillation (re-scoring
  with the student's own predictions), Adam + cosine schedule, checkpoint selection
  without test labels, resumable from ``DistilState.state_dict()``.

Randomness: every epoch's shuffling, augmentation and dropout draw from streams seeded by
(seed, epoch[, rank]), so a run resumed from a state dict replays exactly what the
uninterrupted run would have done, with no RNG state to carry.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from distill.augment import augment
from distill.config import TrainConfig
from distill.labels import MASKED_LOGIT, LabelSpace, group_for_students, mask_logits
from distill.losses import distillation_loss
from distill.metrics import MIoUTable
from distill.records import KnowledgeUnits, Shape
from distill.rescore import knowledge_agreement, rescore, should_rescore
from distill.samples import (
    Batch,
    ShapeSample,
    _seed,
    collate,
    epoch_batches,
    prepare_sample,
    prepare_samples,
    resample_units,
    size_batches,
    split_validation,
    steps_per_epoch,
)
from distill.sources import InMemorySource, SampleSource

__all__ = [
    "MASKED_LOGIT",
    "Batch",
    "DistilResult",
    "DistilState",
    "LabelSpace",
    "ShapeSample",
    "apply_rescore",
    "collate",
    "distil",
    "epoch_batches",
    "evaluate",
    "group_for_students",
    "mask_logits",
    "predict",
    "predict_samples",
    "prepare_sample",
    "prepare_samples",
    "recalibrate_batchnorm",
    "resample_units",
    "rescore_samples",
    "rescore_samples_with_rule",
    "split_validation",
    "steps_per_epoch",
    "train_epoch",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- one pass


def _unwrap(model: nn.Module) -> nn.Module:
    """The bare model under a DDP / FSDP-style wrapper (its state dict has no ``module.``)."""
    return getattr(model, "module", model)


def make_optimizer(
    model: nn.Module, cfg: TrainConfig, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Adam at ``train.lr`` with a per-step cosine decay to ``train.lr_min`` over all epochs."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = max(1, cfg.epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=cfg.lr_min)
    return opt, sched


def forward_logits(model: nn.Module, batch: Batch, space: LabelSpace) -> Tensor:
    """(B, N, S) logits of a batch, masked to each element's category."""
    logits = model(batch.points, normals=batch.normals, category=batch.category)
    if logits.shape[-1] != space.num_slots:
        raise ValueError(f"model gives {logits.shape[-1]} logits per point, the label space has {space.num_slots}")
    return mask_logits(logits, batch.category, space)


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    batches: Iterable[Batch],
    device: torch.device | str,
    space: LabelSpace,
    generator: torch.Generator | None = None,
    grad_clip: float = 0.0,
) -> dict[str, float]:
    """One pass over ``batches``; the scheduler steps after every optimiser step.

    generator: draws the augmentation (None: no augmentation) → {"loss": mean batch loss,
    "steps", "shapes", "seconds"}.
    """
    model.train()
    slot_group = space.slot_group().to(device)
    losses, shapes, start = [], 0, time.perf_counter()
    first_batch_at = float("nan")
    for batch in batches:
        if not losses:
            first_batch_at = time.time()  # wall clock: compared with the driver's (bench/scale.py)
        batch = batch.to(device)
        if generator is not None:
            batch.points, batch.normals = augment(batch.points, generator, batch.normals)
        logits = forward_logits(model, batch, space)
        loss = distillation_loss(
            logits,
            batch.point_idx,
            batch.unit_offsets,
            batch.unit_slot,
            batch.unit_score,
            slot_group=slot_group,
            pair_weight=batch.pair_weight,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(float(loss.detach()))
        shapes += batch.points.shape[0]
    return {
        "loss": float(np.mean(losses)) if losses else float("nan"),
        "steps": float(len(losses)),
        "shapes": float(shapes),
        "seconds": time.perf_counter() - start,
        "first_batch_at": first_batch_at,
    }


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
    evenly spaced through the list (64 × 2048 points estimate a mean and variance per
    channel well, and cap the cost at a fraction of an epoch on large corpora). Runs on
    the unwrapped model (no DDP collectives); deterministic, so all workers agree.
    """
    bare = _unwrap(model)
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
    if len(samples) > max_shapes:
        samples = [samples[int(i)] for i in np.linspace(0, len(samples) - 1, max_shapes).round()]
    by_n: dict[int, list[ShapeSample]] = {}
    for s in samples:
        by_n.setdefault(s.num_points, []).append(s)
    for group in by_n.values():
        for start in range(0, len(group), batch_size):
            forward_logits(bare, collate(group[start : start + batch_size]).to(device), space)
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
    model = _unwrap(model)
    was_training = model.training
    model.eval()
    out: list[np.ndarray | None] = [None] * len(samples)
    off = space.offsets
    for chunk in size_batches(samples, batch_size):
        batch = collate([samples[i] for i in chunk]).to(device)
        pred = forward_logits(model, batch, space).argmax(-1).cpu().numpy()
        for row, i in enumerate(chunk):
            out[i] = pred[row] - off[samples[i].category]
    model.train(was_training)
    return out  # type: ignore[return-value]


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
    space = _space_for(shapes, space)
    return predict_samples(model, [prepare_sample(s, None, space) for s in shapes], device, space, batch_size)


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


# --------------------------------------------------------------------------- the driver



@dataclass
class DistilState:
    """Where a ``distil`` run stands; ``state_dict()`` is what a checkpoint stores.

    epoch: epochs completed · round: re-scoring rounds done (a streaming source reads
    that round's scores) · round_start: index in ``losses`` of the first epoch after the
    last re-scoring · losses: mean loss per epoch · history: one dict per epoch (loss, lr,
    round, val, seconds) · scores: current unit scores per shape id, for in-memory sources
    only (a streaming run keeps them in its round's score table, so a checkpoint's size
    does not grow with the corpus) · pair_weights: relative (point, unit) weights per
    shape id, set by a point-level re-scoring rule (in-memory sources; empty otherwise) ·
    best_*: the validation-selected snapshot.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    seed: int
    epoch: int = 0
    round: int = 0
    round_start: int = 0
    losses: list[float] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    pair_weights: dict[str, np.ndarray] = field(default_factory=dict)
    best_score: float = -math.inf
    best_epoch: int = 0
    best_model: dict[str, torch.Tensor] | None = None
    pending_rescore: bool = False

    def state_dict(self) -> dict[str, Any]:
        """A ``torch.save``-able snapshot (tensors of the model cloned onto the CPU)."""
        return {
            "version": 2,
            "seed": self.seed,
            "epoch": self.epoch,
            "round": self.round,
            "round_start": self.round_start,
            "losses": list(self.losses),
            "history": copy.deepcopy(self.history),
            "scores": {k: v.copy() for k, v in self.scores.items()},
            "pair_weights": {k: v.copy() for k, v in self.pair_weights.items()},
            "model": {k: v.detach().cpu().clone() for k, v in _unwrap(self.model).state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict(),
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "best_model": self.best_model,
            "pending_rescore": self.pending_rescore,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != 2:
            raise ValueError(
                f"resume state has version {state.get('version')!r}, expected 2 (checkpoints of older "
                "releases cannot be resumed: start the run afresh)"
            )
        if state["seed"] != self.seed:
            raise ValueError(f"resume state was made with seed {state['seed']}, this run has seed {self.seed}")
        if state.get("pending_rescore"):
            raise ValueError(
                f"resume state after epoch {state['epoch']} awaits backward distillation's re-scoring: "
                "re-score, then resume from apply_rescore(state, ...)"
            )
        _unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        for key in ("epoch", "round", "round_start", "best_score", "best_epoch", "best_model"):
            setattr(self, key, state[key])
        self.losses = list(state["losses"])
        self.history = copy.deepcopy(state["history"])
        self.scores = {k: np.asarray(v, np.float32).copy() for k, v in state["scores"].items()}
        self.pair_weights = {k: np.asarray(v, np.float32).copy() for k, v in state.get("pair_weights", {}).items()}


@dataclass
class DistilResult:
    """What ``distil`` returns: the model (holding the selected weights), the selected
    epoch, per-epoch history, the final units per shape id (in-memory sources) and the
    final state dict."""

    model: nn.Module
    selected_epoch: int
    history: list[dict[str, float]]
    units: dict[str, KnowledgeUnits]
    state: dict[str, Any]
    pending_rescore: bool = False
    """True when the run stopped for an external re-scoring (``rescore_externally``)."""


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
        current = s.unit_score.numpy() if scores is None else scores[s.shape_id]
        out[s.shape_id] = rescore(_sample_units(s, space, current), pred).score
    return out


def rescore_samples_with_rule(
    model: nn.Module,
    samples: Sequence[ShapeSample],
    space: LabelSpace,
    cfg: TrainConfig,
    device: torch.device | str,
    seed: int,
    epoch: int,
    template: nn.Module | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Backward distillation with ``cfg.rescore`` (``distill.crossfit``): new unit scores
    and relative pair weights by shape id (empty for unit rules). ``samples`` carry the
    current scores (the ``_balanced`` rules keep each part's mass of them). ``model``: the
    run's own snapshot (BatchNorm recalibrated); the crossfit rules instead train
    ``cfg.crossfit_folds`` snapshots from ``template`` (the untrained model) up to ``epoch``
    on the units outside each fold, and score each unit with the one that never saw it.
    """
    from distill.crossfit import rescore_with_rule, train_fold_snapshots, unit_folds
    from distill.rescore import balance_part_mass

    rule = cfg.rescore.removesuffix("_balanced")
    if cfg.rescore.startswith("crossfit"):
        if template is None:
            raise ValueError(f"train.rescore={cfg.rescore} needs the untrained model as template")
        folds = unit_folds(samples, space, cfg, seed)
        snapshots = train_fold_snapshots(template, samples, space, cfg, epoch, device, seed, folds)
    else:
        folds, snapshots = None, [model]
    scores, pairs = rescore_with_rule(rule, snapshots, samples, space, folds, device, cfg.batch_size)
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


def _sample_units(s: ShapeSample, space: LabelSpace, score: np.ndarray) -> KnowledgeUnits:
    """The sample's units in its own point indexing (after any resampling), with ``score``."""
    return KnowledgeUnits(
        s.shape_id,
        np.zeros(s.num_units, np.int64),
        s.unit_slot.numpy() - space.offsets[s.category],
        np.asarray(score, np.float32),
        s.point_idx.numpy(),
        s.unit_offsets.numpy(),
    )


def _units_with_scores(
    samples: Sequence[ShapeSample], scores: dict[str, np.ndarray], round: int
) -> dict[str, KnowledgeUnits]:
    out = {}
    for s in samples:
        if s.units is not None and s.num_units:
            out[s.shape_id] = s.units.with_scores(scores[s.shape_id], round)
    return out


def _validation_score(
    model: nn.Module, chunks: Iterable[Sequence[ShapeSample]], device: torch.device | str, space: LabelSpace, bs: int
) -> float:
    """Score-weighted agreement of the student with the teacher's original units."""
    hits = total = 0.0
    for chunk in chunks:
        for s, pred in zip(chunk, predict_samples(model, chunk, device, space, bs)):
            h, t = knowledge_agreement(_sample_units(s, space, s.unit_score.numpy()), pred)
            hits, total = hits + h, total + t
    return hits / total if total else float("nan")


class PoseReferences:
    """A student that fits per-category reference clouds before training (the pose
    co-alignment wrapper, ``distill.student.aligned``) implements ``fit_references``."""

    @staticmethod
    def fit(model: nn.Module, samples: Sequence[ShapeSample]) -> None:
        bare = _unwrap(model)
        fit = getattr(bare, "fit_references", None)
        if callable(fit):
            fit([s.points for s in samples], [s.category for s in samples])


def distil(
    model: nn.Module,
    samples: Sequence[ShapeSample] | SampleSource,
    space: LabelSpace,
    cfg: TrainConfig,
    device: torch.device | str = "cpu",
    seed: int = 0,
    on_epoch_end: Callable[[DistilState], bool | None] | None = None,
    on_rescore: Callable[[int, dict[str, KnowledgeUnits]], None] | None = None,
    resume: dict[str, Any] | None = None,
    rank: int = 0,
    world_size: int = 1,
    reduce_mean: Callable[[float], float] | None = None,
    grad_clip: float = 0.0,
    rescore_externally: bool = False,
) -> DistilResult:
    """Forward then backward distillation of ``model`` (DESIGN §3).

    model: on ``device``, possibly DDP-wrapped · samples: a list of every distillation
    shape (wrapped in an ``InMemorySource``, sharded by ``rank``/``world_size``) or a
    streaming ``SampleSource`` that yields this worker's batches · space: the model's
    label space · seed: drives the validation split, shuffling, augmentation and dropout.

    Each epoch: ``train_epoch`` on this worker's batches; the epoch loss is averaged over
    workers by ``reduce_mean`` (default: identity) so every worker takes the same
    decisions; with ``train.select=val`` the student is scored on the held-out shapes
    against the teacher's units and the best snapshot kept; if ``should_rescore``: an
    in-memory run predicts every shape, re-scores every unit (``rescore``), bumps the
    round and calls ``on_rescore(round, units_by_shape_id)``. Then ``on_epoch_end(state)``
    (save ``state.state_dict()`` there; return True to stop early).

    rescore_externally (always so for a streaming source): when re-scoring is due, mark
    the state ``pending_rescore``, call ``on_epoch_end`` (save it there) and return with
    ``pending_rescore=True``; the caller re-scores elsewhere, moves the state on with
    ``apply_rescore`` and resumes from it.

    resume: a ``DistilState.state_dict()`` of this same run (same data, config and seed):
    training continues after its epoch and ends exactly as the uninterrupted run. The
    returned model holds the last epoch's weights (``train.select=last``) or the best
    validation snapshot (``select=val``); test labels are never read.
    """
    if isinstance(samples, SampleSource):
        source = samples
    else:
        source = InMemorySource(
            samples, cfg.batch_size, seed, cfg.select == "val", cfg.val_fraction, rank, world_size
        )
    if cfg.select == "val" and not source.has_validation:
        log.warning("train.select=val but no shape is held out for validation; selecting the last epoch")
    rescore_externally = rescore_externally or not source.in_memory
    device = torch.device(device)
    reduce_mean = reduce_mean or (lambda x: x)

    n_steps = steps_per_epoch(source.num_train, cfg.batch_size, world_size)
    optimizer, scheduler = make_optimizer(model, cfg, n_steps)
    state = DistilState(model, optimizer, scheduler, seed)
    if source.in_memory:
        state.scores = source.initial_scores()  # type: ignore[attr-defined]
    if resume is not None:
        state.load_state_dict(resume)  # the pose references (buffers) come back with the weights
        if source.in_memory and set(state.scores) != set(source.initial_scores()):  # type: ignore[attr-defined]
            raise ValueError("resume state's shapes differ from the samples given")
    else:
        PoseReferences.fit(model, source.reference_samples())
    if source.in_memory:
        source.pair_weights = state.pair_weights  # type: ignore[attr-defined]
    # Cross-fitted re-scoring trains K snapshots from scratch: keep the untrained model.
    template = copy.deepcopy(_unwrap(model)) if cfg.bd_rounds and cfg.rescore.startswith("crossfit") else None

    cuda = [device.index or 0] if device.type == "cuda" else []
    recalibrated = state.epoch
    while state.epoch < cfg.epochs:
        epoch = state.epoch
        batches = source.train_batches(epoch, state.scores)
        gen = torch.Generator().manual_seed(_seed(seed, epoch, rank, 1)) if cfg.augment else None
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(_seed(seed, epoch, rank, 2))  # dropout
            stats = train_epoch(model, optimizer, scheduler, batches, device, space, gen, grad_clip)
        loss = float(reduce_mean(stats["loss"]))
        state.epoch = epoch + 1
        state.losses.append(loss)
        record: dict[str, float] = {
            "epoch": float(state.epoch),
            "loss": loss,
            "lr": float(optimizer.param_groups[0]["lr"]),
            "round": float(state.round),
            "seconds": stats["seconds"],
            "shapes_per_s": stats["shapes"] / max(stats["seconds"], 1e-9),
            "first_batch_at": stats["first_batch_at"],
        }
        rescore_now = should_rescore(state.epoch, state.losses[state.round_start :], cfg, state.round)
        if source.has_validation or rescore_now:
            # Eval-mode statistics from the current weights for the predictions below (see
            # recalibrate_batchnorm); the final model gets its own after the loop. Training
            # never reads the running statistics, so checkpoints in between need none.
            recalibrate_batchnorm(model, source.calibration_samples(), device, space, cfg.batch_size)
            recalibrated = state.epoch
        if source.has_validation and (rank == 0 or source.in_memory):
            # A streaming run scores validation on rank 0 only: it alone keeps and saves the
            # best snapshot, and the other workers need not read the held-out parts.
            val = _validation_score(model, source.validation_chunks(), device, space, cfg.batch_size)
            record["val_agreement"] = val
            if val > state.best_score:
                state.best_score, state.best_epoch = val, state.epoch
                state.best_model = {k: v.detach().cpu().clone() for k, v in _unwrap(model).state_dict().items()}
        if rescore_now and rescore_externally:
            state.pending_rescore = True
            record["rescore_pending"] = 1.0
            state.history.append(record)
            log.info("epoch %d/%d %s: stopping for re-scoring", state.epoch, cfg.epochs, record)
            if on_epoch_end is not None:
                on_epoch_end(state)
            return DistilResult(model, state.epoch, state.history, {}, state.state_dict(), pending_rescore=True)
        if rescore_now:
            every = source.all_samples(state.scores)
            if cfg.rescore == "agreement":
                state.scores = rescore_samples(model, every, space, state.scores, device, cfg.batch_size)
            else:
                state.scores, state.pair_weights = rescore_samples_with_rule(
                    model, every, space, cfg, device, seed, state.epoch, template
                )
                source.pair_weights = state.pair_weights  # type: ignore[attr-defined]
            state.round += 1
            state.round_start = len(state.losses)
            record["rescored"] = 1.0
            if on_rescore is not None:
                on_rescore(state.round, _units_with_scores(every, state.scores, state.round))
        state.history.append(record)
        log.info("epoch %d/%d %s", state.epoch, cfg.epochs, {k: round(v, 4) for k, v in record.items()})
        if on_epoch_end is not None and on_epoch_end(state):
            break

    if recalibrated != state.epoch:  # the final weights, unless the last epoch just did
        recalibrate_batchnorm(model, source.calibration_samples(), device, space, cfg.batch_size)
    selected = state.epoch
    if source.has_validation and state.best_model is not None:
        _unwrap(model).load_state_dict(state.best_model)
        selected = state.best_epoch
    units = _units_with_scores(source.all_samples(state.scores), state.scores, state.round) if source.in_memory else {}
    return DistilResult(
        model=model,
        selected_epoch=selected,
        history=state.history,
        units=units,
        state=state.state_dict(),
    )
