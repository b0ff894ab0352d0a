"""The encoder-pretraining loop, shared by one process and Ray Train's workers.

``fit_encoder`` trains a ``MaskedPointModel`` over epochs of cloud batches with AdamW and
a warm-up + cosine schedule, and hands a checkpointable state to ``on_epoch_end`` after
every epoch. Every draw of an epoch (augmentation, which patches hide) comes from a
generator seeded by (seed, epoch, rank), so a fit resumed from the state of epoch e
continues exactly as the uninterrupted fit would, given the same batches.

Pure torch, no IO: where the batches come from and where states go is the caller's
(``cluster.training.encoder``).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from distill.augment import augment
from distill.config import ConfigError, EncoderConfig
from distill.passes import autocast, unwrap, warmup_cosine
from distill.samples import mix_seed
from distill.training import ONE_WORKER, Workers

STATE_FORMAT = "partdistill-encoder-state/1"

CloudBatch = tuple[Tensor, Tensor | None]
"""A batch of clouds: points (B, N, 3) and normals (B, N, 3) or None."""


@dataclass
class EncoderFitState:
    """What a checkpoint of an encoder fit holds (``last.pt``)."""

    model: dict[str, Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    epoch: int
    settings: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, **self.__dict__}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> EncoderFitState:
        if d.get("format") != STATE_FORMAT:
            raise ConfigError(f"{where} is not an encoder-pretraining checkpoint — delete it to start that run afresh")
        return cls(d["model"], d["optimizer"], d["scheduler"], int(d["epoch"]), d["settings"], list(d["history"]))


def check_resume(state: EncoderFitState, settings: dict[str, Any], where: str) -> None:
    """Refuse to resume a fit whose settings (architecture, objective, schedule) differ."""
    differ = sorted(k for k in settings if state.settings.get(k) != settings[k])
    if differ:
        was = ", ".join(f"{k}={state.settings.get(k)!r}" for k in differ)
        now = ", ".join(f"{k}={settings[k]!r}" for k in differ)
        raise ConfigError(
            f"{where} was trained with {was}; this run asks {now} — use another run name, "
            "or delete that checkpoint to start afresh"
        )


def make_encoder_optimizer(
    model: nn.Module, cfg: EncoderConfig, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW (Point-MAE's optimiser) with a warm-up + cosine schedule over all epochs."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return opt, warmup_cosine(opt, cfg.epochs * steps_per_epoch, cfg.warmup_steps, cfg.lr_min / cfg.lr)


def pretrain_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batches: Iterable[CloudBatch],
    device: torch.device,
    generator: torch.Generator,
    amp: str = "none",
    grad_clip: float = 10.0,
) -> dict[str, float]:
    """One pass over ``batches`` → {"loss": mean batch loss, "steps", "shapes", "seconds"}."""
    model.train()
    losses: list[float] = []
    shapes, start = 0, time.perf_counter()
    for points, normals in batches:
        points = points.to(device)
        normals = None if normals is None else normals.to(device)
        points, normals = augment(points, generator, normals)
        with autocast(device, amp):
            loss = model(points, generator, normals)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"encoder pretraining: the loss is {float(loss)} at step {len(losses)}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        shapes += points.shape[0]
    return {
        "loss": float(np.mean(losses)) if losses else float("nan"),
        "steps": float(len(losses)),
        "shapes": float(shapes),
        "seconds": time.perf_counter() - start,
    }


def fit_encoder(
    model: nn.Module,
    batches: Callable[[int], Iterable[CloudBatch]],
    cfg: EncoderConfig,
    steps_per_epoch: int,
    device: torch.device,
    seed: int,
    settings: dict[str, Any],
    resume: EncoderFitState | None = None,
    workers: Workers = ONE_WORKER,
    amp: str = "none",
    on_epoch_end: Callable[[EncoderFitState], None] | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` (already on ``device``, possibly DDP-wrapped) for ``cfg.epochs``,
    from ``resume`` when given → the per-epoch history.

    batches(epoch): this worker's batches of that epoch · steps_per_epoch: what the
    schedule is sized for · settings: what a resumed state must have been trained with
    (``check_resume``) · workers: the epoch loss is averaged over them.
    """
    opt, sched = make_encoder_optimizer(model, cfg, max(1, steps_per_epoch))
    history: list[dict[str, float]] = []
    first = 0
    if resume is not None:
        check_resume(resume, settings, "the encoder checkpoint")
        unwrap(model).load_state_dict(resume.model)
        opt.load_state_dict(resume.optimizer)
        sched.load_state_dict(resume.scheduler)
        history, first = list(resume.history), resume.epoch
    for epoch in range(first, cfg.epochs):
        generator = torch.Generator().manual_seed(mix_seed(seed, epoch, workers.rank, 41))
        stats = pretrain_epoch(model, opt, sched, batches(epoch), device, generator, amp)
        loss = workers.mean(stats["loss"])
        if not math.isfinite(loss):
            raise ValueError(f"encoder pretraining: epoch {epoch + 1} saw no batch (is the corpus empty?)")
        history.append({**stats, "loss": loss, "epoch": float(epoch + 1), "lr": float(sched.get_last_lr()[0])})
        if on_epoch_end is not None:
            bare = unwrap(model)
            on_epoch_end(
                EncoderFitState(  # copies: the state outlives this epoch's weights
                    {k: v.detach().cpu().clone() for k, v in bare.state_dict().items()},
                    copy.deepcopy(opt.state_dict()),
                    copy.deepcopy(sched.state_dict()),
                    epoch + 1,
                    settings,
                    list(history),
                )
            )
    return history


__all__ = ["CloudBatch", "EncoderFitState", "fit_encoder", "make_encoder_optimizer", "pretrain_epoch"]
