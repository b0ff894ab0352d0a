"""An exponential moving average of a student's weights (``train.ema``).

The last iterate of a short noisy schedule is one draw around the optimum; its average
over the last few hundred steps is steadier and usually better (Polyak averaging; the
"mean teacher" of semi-supervised learning). BatchNorm's running statistics are not
averaged: whoever predicts with the averaged weights re-estimates them first
(``distill.passes.recalibrate_batchnorm``), as for any other prediction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn


class WeightAverage:
    """Shadow copies of ``model``'s parameters, updated after every optimiser step by
    shadow ← d·shadow + (1 − d)·param, with d = min(decay, (1 + t) / (10 + t)) at step t,
    so the average forgets the random initial weights within its first steps."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay={decay} must be in (0, 1)")
        self.decay, self.steps = decay, 0
        self.shadow: dict[str, Tensor] = {k: p.detach().clone() for k, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = min(self.decay, (1.0 + self.steps) / (10.0 + self.steps))
        for k, p in model.named_parameters():
            self.shadow[k].lerp_(p.detach(), 1.0 - d)
        self.steps += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into ``model`` (its buffers stay)."""
        for k, p in model.named_parameters():
            p.copy_(self.shadow[k])

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """``model`` holds the averaged weights inside the block, its own after it."""
        saved = {k: p.detach().clone() for k, p in model.named_parameters()}
        self.copy_to(model)
        try:
            yield
        finally:
            with torch.no_grad():
                for k, p in model.named_parameters():
                    p.copy_(saved[k])

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "steps": self.steps, "shadow": {k: v.cpu().clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state["shadow"]) != set(self.shadow):
            raise ValueError("weight-average state does not match the model's parameters")
        self.decay, self.steps = float(state["decay"]), int(state["steps"])
        self.shadow = {k: v.to(self.shadow[k]).clone() for k, v in state["shadow"].items()}


def maybe_applied(average: WeightAverage | None, model: nn.Module) -> contextlib.AbstractContextManager[None]:
    """``average.applied(model)``, or nothing when there is no average."""
    return contextlib.nullcontext() if average is None else average.applied(model)
