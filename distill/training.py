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
* ``distill.fit``: the components the loop calls: ``DistilState`` and ``Checkpoints``
  (checkpointing), ``ScoreKeeper`` (where scores live, who re-scores), ``Validator``
  (selection without test labels), ``EpochRunner`` and ``Calibration``.
* here: ``distil`` (set-up: Adam + cosine schedule and the components; then the epochs,
  re-scoring when ``should_rescore`` says), ``DistilResult``, ``Workers``.

Randomness: every epoch's shuffling, augmentation and dropout draw from streams seeded by
(seed, epoch[, rank]), so a run resumed from a state dict replays exactly what the
uninterrupted run would have done, with no RNG state to carry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from distill.config import TrainConfig
from distill.ema import WeightAverage, maybe_applied
from distill.fit.epoch import Calibration, EpochRunner
from distill.fit.scores import score_keeper
from distill.fit.state import Checkpoints, DistilState
from distill.fit.validation import Validator
from distill.labels import LabelSpace
from distill.passes import corpus_class_weights, make_optimizer, unwrap
from distill.records import KnowledgeUnits
from distill.regularisers import regulariser
from distill.rescore import should_rescore
from distill.samples import ShapeSample, steps_per_epoch
from distill.sources import InMemorySource, SampleSource

__all__ = ["ONE_WORKER", "DistilResult", "DistilState", "PoseReferences", "Workers", "distil"]

log = logging.getLogger(__name__)


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
    source = _source(samples, cfg, seed, workers)
    if cfg.select == "val" and not source.has_validation:
        log.warning("train.select=val but no shape is held out for validation; selecting the last epoch")
    device = torch.device(device)

    # Set-up: the schedule, the state, and the components the epochs call.
    n_steps = steps_per_epoch(source.num_train, cfg.batch_size, workers.world_size)
    cfg = cfg.with_steps(n_steps)  # epochs enough for train.min_steps
    optimizer, scheduler = make_optimizer(model, cfg, n_steps)
    state = DistilState(model, optimizer, scheduler, seed)
    if cfg.ema > 0:
        state.average = WeightAverage(unwrap(model), cfg.ema)
    extra_loss = regulariser(cfg, model, state.average, space, cfg.epochs * n_steps)
    checkpoints = Checkpoints(resume, on_epoch_end)
    scores = score_keeper(source, space, cfg, device, rescore_externally, on_rescore)
    resumed = checkpoints.restore(state)  # the pose references (buffers) come back with the weights
    if not resumed:
        PoseReferences.fit(model, source.reference_samples())
    scores.start(state, resumed)
    class_weight = None
    if cfg.class_weights == "corpus":
        class_weight = corpus_class_weights(source.class_count_samples(), space).to(device)
    epoch_runner = EpochRunner(
        model, source, space, cfg, device, seed, workers.rank, workers.mean, class_weight, extra_loss
    )
    validator = Validator(source, space, device, cfg.batch_size, workers.rank)
    calibrate = Calibration(model, source, space, device, cfg.batch_size, state.epoch)

    while state.epoch < cfg.epochs:
        record = epoch_runner.run(state)
        rescore_now = should_rescore(state.epoch, state.losses[state.round_start :], cfg, state.round)
        stop_for_rescore = False
        with maybe_applied(state.average, unwrap(model)):  # predictions use the averaged weights
            if source.has_validation or rescore_now:
                # Eval-mode statistics from the current weights for the predictions below (see
                # recalibrate_batchnorm); the final model gets its own after the loop.
                calibrate(state.epoch)
            validator.score(model, state, record)
            if rescore_now:
                stop_for_rescore = scores.rescore(model, state, record)
        state.history.append(record)
        if stop_for_rescore:
            log.info("epoch %d/%d %s: stopping for re-scoring", state.epoch, cfg.epochs, record)
            checkpoints.epoch_end(state)  # saves the pending state; stopping is not the caller's choice
            return DistilResult(model, state.epoch, state.history, {}, state.state_dict(), pending_rescore=True)
        log.info("epoch %d/%d %s", state.epoch, cfg.epochs, {k: round(v, 4) for k, v in record.items()})
        if checkpoints.epoch_end(state):
            break

    calibrate.finish(state)
    selected = validator.select(model, state)
    units = scores.final_units(state)
    return DistilResult(
        model=model, selected_epoch=selected, history=state.history, units=units, state=state.state_dict()
    )


def _source(
    samples: Sequence[ShapeSample] | SampleSource, cfg: TrainConfig, seed: int, workers: Workers
) -> SampleSource:
    """``samples`` as a source: a streaming one as it is, a list in an ``InMemorySource``
    (this worker's shard, validation split when ``train.select=val``)."""
    if isinstance(samples, SampleSource):
        return samples
    return InMemorySource(
        samples,
        cfg.batch_size,
        seed,
        cfg.select == "val",
        cfg.val_fraction,
        workers.rank,
        workers.world_size,
        order_seed=cfg.data_order_seed(seed),
    )
