"""What a fit's checkpoint stores and how a fit hands it out and takes it back.

* ``DistilState``: where a ``distil`` run stands; ``state_dict()`` is the checkpoint, and
  ``load_state_dict`` resumes from one (the run then ends exactly as the uninterrupted one).
* ``Checkpoints``: the fit's checkpointing component: ``restore`` a resume state at set-up,
  and ``epoch_end`` hands the state to the caller's ``on_epoch_end`` after every epoch
  (the caller saves ``state.state_dict()`` there, and may ask to stop).
* ``cpu_state``: a model's weights cloned onto the CPU (checkpoints, snapshots).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from distill.ema import WeightAverage
from distill.passes import unwrap


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The bare model's state dict (no DDP ``module.``), every tensor cloned onto the CPU."""
    return {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}


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
            "model": cpu_state(self.model),
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


@dataclass(frozen=True)
class Checkpoints:
    """A fit's checkpointing: the state it resumes from and the hook each epoch's state goes to.

    resume: a ``DistilState.state_dict()`` of this same run (same data, config and seed), or
    None · on_epoch_end: called with the state after every epoch (save
    ``state.state_dict()`` there; return True to stop early).
    """

    resume: dict[str, Any] | None = None
    on_epoch_end: Callable[[DistilState], bool | None] | None = None

    def restore(self, state: DistilState) -> bool:
        """Load the resume state into ``state`` (the pose references, buffers, come back with
        the weights) → whether there was one."""
        if self.resume is None:
            return False
        state.load_state_dict(self.resume)
        return True

    def epoch_end(self, state: DistilState) -> bool:
        """Hand ``state`` to ``on_epoch_end`` → whether the caller asks to stop."""
        return self.on_epoch_end is not None and bool(self.on_epoch_end(state))
