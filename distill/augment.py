"""Training-time point-cloud augmentation (docs/design.md §3, the official ``augment_cloud``).

Per shape: anisotropic scale, one factor per axis uniform in [0.9, 1.1]; shift, one offset
per axis uniform in [−0.1, 0.1]. Per point: Gaussian jitter σ = 0.01 clipped to ±0.02.
All draws come from the given ``torch.Generator`` (on the CPU, so a run is reproducible
on any device).
"""

from __future__ import annotations

import torch
from torch import Tensor


def augment(
    points: Tensor,
    generator: torch.Generator,
    normals: Tensor | None = None,
    scale: tuple[float, float] = (0.9, 1.1),
    shift: float = 0.1,
    jitter_sigma: float = 0.01,
    jitter_clip: float = 0.02,
) -> tuple[Tensor, Tensor | None]:
    """Randomly scale, shift and jitter a batch of clouds.

    points: (B, N, 3) · normals: (B, N, 3) or None → (points', normals'). Normals follow
    the scale as covectors (multiplied by 1/scale, renormalised) and ignore shift and
    jitter. The generator must live on the CPU; draws are moved to ``points.device``.
    """
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"points must be (B, N, 3), got shape {tuple(points.shape)}")
    if normals is not None and normals.shape != points.shape:
        raise ValueError(f"normals {tuple(normals.shape)} must match points {tuple(points.shape)}")
    b, n, _ = points.shape
    lo, hi = scale
    s = torch.rand(b, 1, 3, generator=generator) * (hi - lo) + lo
    t = (torch.rand(b, 1, 3, generator=generator) * 2.0 - 1.0) * shift
    j = (torch.randn(b, n, 3, generator=generator) * jitter_sigma).clamp_(-jitter_clip, jitter_clip)
    dev, dt = points.device, points.dtype
    out = points * s.to(dev, dt) + t.to(dev, dt) + j.to(dev, dt)
    if normals is None:
        return out, None
    nrm = normals / s.to(dev, dt)
    return out, nrm / nrm.norm(dim=-1, keepdim=True).clamp_min(1e-12)
