"""One epoch of a fit, and the BatchNorm statistics its predictions need.

* ``EpochRunner``: this worker's batches of the epoch through ``distill.passes.train_epoch``
  (whose steps run forward/backward) under streams seeded by (seed, epoch, rank) — so a
  resumed run replays the uninterrupted one with no RNG state to carry — then the loss
  averaged over the workers, the state moved on and the epoch's history record.
* ``Calibration``: BatchNorm re-calibration with the current weights, remembering the
  epoch it last ran, and the fit's final weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from distill.config import TrainConfig
from distill.fit.state import DistilState
from distill.labels import LabelSpace
from distill.passes import ExtraLoss, recalibrate_batchnorm, train_epoch, unwrap
from distill.samples import mix_seed
from distill.sources import SampleSource


@dataclass(frozen=True)
class EpochRunner:
    """Runs one epoch of ``model`` on ``source`` (module docstring).

    rank: this worker's (its augmentation and dropout streams) · mean: averages a float
    over the workers (``distill.training.Workers.mean``) · class_weight, extra_loss:
    ``train_epoch``'s.
    """

    model: nn.Module
    source: SampleSource
    space: LabelSpace
    cfg: TrainConfig
    device: torch.device
    seed: int
    rank: int
    mean: Callable[[float], float]
    class_weight: Tensor | None = None
    extra_loss: ExtraLoss | None = None

    def run(self, state: DistilState) -> dict[str, float]:
        """Train epoch ``state.epoch`` (0-based) with ``state``'s scores; count it in ``state``
        → the epoch's history record (epoch, loss, lr, round, seconds, shapes_per_s,
        first_batch_at)."""
        cfg, model, epoch, average = self.cfg, self.model, state.epoch, state.average
        batches = self.source.train_batches(epoch, state.scores)
        gen = torch.Generator().manual_seed(mix_seed(self.seed, epoch, self.rank, 1)) if cfg.augment else None
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(mix_seed(self.seed, epoch, self.rank, 2))  # dropout
            stats = train_epoch(
                model,
                state.optimizer,
                state.scheduler,
                batches,
                self.device,
                self.space,
                gen,
                amp=cfg.amp,
                class_weight=self.class_weight,
                after_step=None if average is None else lambda: average.update(unwrap(model)),
                extra_loss=self.extra_loss,
            )
        loss = float(self.mean(stats["loss"]))
        state.epoch = epoch + 1
        state.losses.append(loss)
        return {
            "epoch": float(state.epoch),
            "loss": loss,
            "lr": float(state.optimizer.param_groups[0]["lr"]),
            "round": float(state.round),
            "seconds": stats["seconds"],
            "shapes_per_s": stats["shapes"] / max(stats["seconds"], 1e-9),
            "first_batch_at": stats["first_batch_at"],
        }


class Calibration:
    """Eval-mode BatchNorm statistics (``recalibrate_batchnorm`` on the source's calibration
    samples) for the weights ``model`` holds when called. Training never reads the running
    statistics, so only predictions and the final model need them.

    epoch: the epoch whose weights were last calibrated (at set-up: the state's).
    """

    def __init__(
        self,
        model: nn.Module,
        source: SampleSource,
        space: LabelSpace,
        device: torch.device,
        batch_size: int,
        epoch: int,
    ) -> None:
        self.model, self.source, self.space, self.device, self.batch_size = model, source, space, device, batch_size
        self.epoch = epoch

    def __call__(self, epoch: int) -> None:
        """Re-calibrate for the weights of ``epoch`` (``model`` holds them now)."""
        recalibrate_batchnorm(self.model, self.source.calibration_samples(), self.device, self.space, self.batch_size)
        self.epoch = epoch

    def finish(self, state: DistilState) -> None:
        """The final weights: the average when there is one (always re-calibrated), else the
        last epoch's (re-calibrated unless that epoch's predictions just were)."""
        if state.average is not None:
            state.average.copy_to(unwrap(self.model))
            self(state.epoch)
        elif self.epoch != state.epoch:
            self(state.epoch)
