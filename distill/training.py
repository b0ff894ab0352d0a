"""The distillation driver (docs/design.md §3, §5.1): ``distil`` runs forward distillation and
``train.bd_rounds`` rounds of backward distillation, resumable from ``DistilState``.

Nothing here knows about Ray or files: the caller (a plain script, or the Ray Train
wrapper in ``cluster/``) builds the model, passes it in (already wrapped in DDP if it
likes), gives it a ``SampleSource`` (``distill.sources``) and receives epochs,
checkpoints and re-scored units through callbacks.

* ``distill.labels.LabelSpace``: the logit slots of one student.
* ``distill.samples``: ``ShapeSample`` / ``prepare_sample``, ``collate`` → ``Batch``.
* ``distill.passes``: ``train_epoch``, ``recalibrate_batchnorm``, ``predict``, ``evaluate``.
* ``distill.backward``: re-scoring in memory, ``apply_rescore`` after an external one.
* here: ``DistilState`` (what a checkpoint stores) and ``distil``: Adam + cosine schedule,
  checkpoint selection without test labels, re-scoring when ``should_rescore`` says.

Randomness: every epoch's shuffling, augmentation and dropout draw from streams seeded by
(seed, epoch[, rank]), so a run resumed from a state dict replays exactly what the
uninterrupted run would have done, with no RNG state to carry.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from distill.backward import rescore_samples, rescore_samples_with_rule, units_of, units_with_scores
from distill.config import TrainConfig
from distill.ema import WeightAverage, maybe_applied
from distill.labels import LabelSpace
from distill.passes import (
    corpus_class_weights,
    make_optimizer,
    predict_samples,
    recalibrate_batchnorm,
    train_epoch,
    unwrap,
)
from distill.records import KnowledgeUnits
from distill.regularisers import regulariser
from distill.rescore import knowledge_agreement, should_rescore
from distill.samples import ShapeSample, mix_seed, steps_per_epoch
from distill.sources import InMemorySource, SampleSource

log = logging.getLogger(__name__)


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
    average: WeightAverage | None = None
    """The weights' moving average (``train.ema`` > 0): what validation, re-scoring and the
    final model use; training goes on with the raw weights."""
    rescore_snapshot: dict[str, torch.Tensor] | None = None
    """With an average, the averaged weights (BatchNorm re-calibrated) an external
    re-scoring pass predicts with; ``model`` keeps the raw weights training resumes from."""

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
            "model": {k: v.detach().cpu().clone() for k, v in unwrap(self.model).state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict(),
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "best_model": self.best_model,
            "pending_rescore": self.pending_rescore,
            "average": None if self.average is None else self.average.state_dict(),
            "rescore_snapshot": self.rescore_snapshot if self.pending_rescore else None,
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
        unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        for key in ("epoch", "round", "round_start", "best_score", "best_epoch", "best_model"):
            setattr(self, key, state[key])
        self.losses = list(state["losses"])
        self.history = copy.deepcopy(state["history"])
        self.scores = {k: np.asarray(v, np.float32).copy() for k, v in state["scores"].items()}
        self.pair_weights = {k: np.asarray(v, np.float32).copy() for k, v in state.get("pair_weights", {}).items()}
        if (state.get("average") is None) != (self.average is None):
            raise ValueError("resume state and this run differ in train.ema (weight averaging on or off)")
        if self.average is not None:
            self.average.load_state_dict(state["average"])


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


def _validation_score(
    model: nn.Module, chunks: Iterable[Sequence[ShapeSample]], device: torch.device | str, space: LabelSpace, bs: int
) -> float:
    """Score-weighted agreement of the student with the teacher's original units."""
    hits = total = 0.0
    for chunk in chunks:
        for s, pred in zip(chunk, predict_samples(model, chunk, device, space, bs)):
            h, t = knowledge_agreement(units_of(s, space), pred)
            hits, total = hits + h, total + t
    return hits / total if total else float("nan")


@dataclass(frozen=True)
class Workers:
    """Where this process stands among a fit's data-parallel workers: ``rank`` of
    ``world_size`` (its shard of an in-memory source, its dropout and augmentation
    streams) and ``reduce_mean``, which averages a float over them (an all-reduce; None:
    one worker), so every worker takes the same decisions from the same epoch loss."""

    rank: int = 0
    world_size: int = 1
    reduce_mean: Callable[[float], float] | None = None

    def mean(self, x: float) -> float:
        """``x`` averaged over the workers."""
        return x if self.reduce_mean is None else self.reduce_mean(x)


ONE_WORKER = Workers()
"""The default: a fit that runs in one process."""


class PoseReferences:
    """A student that fits per-category reference clouds before training (the pose
    co-alignment wrapper, ``distill.student.aligned``) implements ``fit_references``."""

    @staticmethod
    def fit(model: nn.Module, samples: Sequence[ShapeSample]) -> None:
        bare = unwrap(model)
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
    workers: Workers = ONE_WORKER,
    rescore_externally: bool = False,
) -> DistilResult:
    """Forward then backward distillation of ``model`` (docs/design.md §3).

    model: on ``device``, possibly DDP-wrapped · samples: a list of every distillation
    shape (wrapped in an ``InMemorySource``, sharded by ``workers``) or a streaming
    ``SampleSource`` that yields this worker's batches · space: the model's label space ·
    seed: drives the validation split, shuffling, augmentation and dropout · workers:
    this process's place among the fit's workers (default: the only one).

    Each epoch: ``train_epoch`` on this worker's batches; the epoch loss is averaged over
    workers (``Workers.mean``) so every worker takes the same
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
            samples,
            cfg.batch_size,
            seed,
            cfg.select == "val",
            cfg.val_fraction,
            workers.rank,
            workers.world_size,
            order_seed=cfg.data_order_seed(seed),
        )
    if cfg.select == "val" and not source.has_validation:
        log.warning("train.select=val but no shape is held out for validation; selecting the last epoch")
    rescore_externally = rescore_externally or not source.in_memory
    device = torch.device(device)

    n_steps = steps_per_epoch(source.num_train, cfg.batch_size, workers.world_size)
    cfg = cfg.with_steps(n_steps)  # epochs enough for train.min_steps
    optimizer, scheduler = make_optimizer(model, cfg, n_steps)
    state = DistilState(model, optimizer, scheduler, seed)
    if cfg.ema > 0:
        state.average = WeightAverage(unwrap(model), cfg.ema)
    extra_loss = regulariser(cfg, model, state.average, space, cfg.epochs * n_steps)
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

    class_weight = None
    if cfg.class_weights == "corpus":
        class_weight = corpus_class_weights(source.class_count_samples(), space).to(device)
    cuda = [device.index or 0] if device.type == "cuda" else []
    recalibrated = state.epoch
    while state.epoch < cfg.epochs:
        epoch = state.epoch
        batches = source.train_batches(epoch, state.scores)
        gen = torch.Generator().manual_seed(mix_seed(seed, epoch, workers.rank, 1)) if cfg.augment else None
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(mix_seed(seed, epoch, workers.rank, 2))  # dropout
            stats = train_epoch(
                model,
                optimizer,
                scheduler,
                batches,
                device,
                space,
                gen,
                amp=cfg.amp,
                class_weight=class_weight,
                after_step=None if state.average is None else lambda: state.average.update(unwrap(model)),
                extra_loss=extra_loss,
            )
        loss = float(workers.mean(stats["loss"]))
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
        with maybe_applied(state.average, unwrap(model)):  # predictions use the averaged weights
            if source.has_validation or rescore_now:
                # Eval-mode statistics from the current weights for the predictions below (see
                # recalibrate_batchnorm); the final model gets its own after the loop. Training
                # never reads the running statistics, so checkpoints in between need none.
                recalibrate_batchnorm(model, source.calibration_samples(), device, space, cfg.batch_size)
                recalibrated = state.epoch
            if source.has_validation and (workers.rank == 0 or source.in_memory):
                # A streaming run scores validation on rank 0 only: it alone keeps and saves the
                # best snapshot, and the other workers need not read the held-out parts.
                val = _validation_score(model, source.validation_chunks(), device, space, cfg.batch_size)
                record["val_agreement"] = val
                if val > state.best_score:
                    state.best_score, state.best_epoch = val, state.epoch
                    state.best_model = {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}
            if rescore_now and rescore_externally and state.average is not None:
                state.rescore_snapshot = {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}
            if rescore_now and not rescore_externally:
                every = source.all_samples(state.scores)
                if cfg.rescore == "agreement":
                    state.scores = rescore_samples(model, every, space, state.scores, device, cfg.batch_size)
                else:
                    state.scores, state.pair_weights = rescore_samples_with_rule(model, every, space, cfg, device)
                    source.pair_weights = state.pair_weights  # type: ignore[attr-defined]
                state.round += 1
                state.round_start = len(state.losses)
                record["rescored"] = 1.0
                if on_rescore is not None:
                    on_rescore(state.round, units_with_scores(every, state.scores, state.round))
        if rescore_now and rescore_externally:
            state.pending_rescore = True
            record["rescore_pending"] = 1.0
            state.history.append(record)
            log.info("epoch %d/%d %s: stopping for re-scoring", state.epoch, cfg.epochs, record)
            if on_epoch_end is not None:
                on_epoch_end(state)
            return DistilResult(model, state.epoch, state.history, {}, state.state_dict(), pending_rescore=True)
        state.history.append(record)
        log.info("epoch %d/%d %s", state.epoch, cfg.epochs, {k: round(v, 4) for k, v in record.items()})
        if on_epoch_end is not None and on_epoch_end(state):
            break

    if state.average is not None:  # the final model is the average
        state.average.copy_to(unwrap(model))
        recalibrate_batchnorm(model, source.calibration_samples(), device, space, cfg.batch_size)
    elif recalibrated != state.epoch:  # the final weights, unless the last epoch just did
        recalibrate_batchnorm(model, source.calibration_samples(), device, space, cfg.batch_size)
    selected = state.epoch
    if source.has_validation and state.best_model is not None:
        unwrap(model).load_state_dict(state.best_model)
        selected = state.best_epoch
    units = units_with_scores(source.all_samples(state.scores), state.scores, state.round) if source.in_memory else {}
    return DistilResult(
        model=model,
        selected_epoch=selected,
        history=state.history,
        units=units,
        state=state.state_dict(),
    )
