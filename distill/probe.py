"""Linear probe of a point encoder: how much part structure its frozen features hold.

A per-category linear classifier is fitted on the frozen per-point features of labelled
shapes and scored (mIoU) on others. Comparing a pretrained encoder with the same
architecture at random initialisation tells whether pretraining taught the features
anything, independently of distillation (``bench/encoder_probe.py``). Both encoders get
their BatchNorm statistics re-estimated on the probe's training clouds (label-free), so
neither is judged on statistics from another point set.

Pure torch + NumPy, no IO.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from distill.metrics import shape_miou


@torch.no_grad()
def encoder_features(encoder: nn.Module, clouds: Sequence[Tensor], batch_size: int = 16) -> list[Tensor]:
    """Per-point features (N_i, C) of each (N_i, 3) cloud, in eval mode, after re-estimating
    the BatchNorm statistics on ``clouds`` (equal sizes within a batch are assumed)."""
    norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    encoder.train()
    for i in range(0, len(clouds), batch_size):
        encoder(torch.stack(list(clouds[i : i + batch_size])))
    for m in norms:
        m.momentum = 0.1
    encoder.eval()
    out: list[Tensor] = []
    for i in range(0, len(clouds), batch_size):
        out += list(encoder(torch.stack(list(clouds[i : i + batch_size]))).float())
    return out


def fit_linear(
    feats: Sequence[Tensor], labels: Sequence[Tensor], num_parts: int, steps: int = 300, lr: float = 0.05
) -> nn.Linear:
    """A linear classifier (C → num_parts) by full-batch Adam from zero on standardised
    features, class-balanced cross-entropy (small parts count as much as large ones)."""
    x = torch.cat(list(feats))
    y = torch.cat(list(labels)).long()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x = (x - mean) / std
    counts = torch.bincount(y, minlength=num_parts).float()
    weight = torch.where(counts > 0, counts.sum() / (num_parts * counts.clamp_min(1)), torch.zeros_like(counts))
    head = nn.Linear(x.shape[1], num_parts)
    nn.init.zeros_(head.weight)  # a convex problem: start from zero, so the fit is deterministic
    nn.init.zeros_(head.bias)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(head(x), y).backward()
        opt.step()
    # fold the standardisation into the layer
    with torch.no_grad():
        head.bias -= (head.weight * (mean / std)).sum(1)
        head.weight /= std
    return head


@torch.no_grad()
def probe_miou(head: nn.Linear, feats: Sequence[Tensor], labels: Sequence[Tensor], num_parts: int) -> list[float]:
    """mIoU ×100 of each shape under the probe."""
    return [
        shape_miou(head(f).argmax(-1).numpy(), y.numpy().astype(np.int64), num_parts)
        for f, y in zip(feats, labels, strict=True)
    ]


__all__ = ["encoder_features", "fit_linear", "probe_miou"]
