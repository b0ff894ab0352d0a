"""Plain PointNet segmentation (Qi et al. 2017): the fast baseline without local context.

Each point is embedded independently, a global max-pool summarises the shape, and the head
sees [local, global]. Cheapest student by far; it cannot see local geometry, so parts that
differ only in neighbourhood shape are hard for it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from distill.student.layers import SegHead, group_max, input_features, mlp


class PointNetEncoder(nn.Module):
    """xyz (+normals) (B, N, C_in) → per-point features (B, N, w + 16w)."""

    def __init__(self, c_in: int, width: int) -> None:
        super().__init__()
        self.local = mlp([c_in, width, width])
        self.globl = mlp([width, 2 * width, 16 * width])
        self.out_channels = width + 16 * width

    def forward(self, x: Tensor) -> Tensor:
        local = self.local(x)
        g = group_max(self.globl(local), 1, keepdim=True)
        return torch.cat([local, g.expand(-1, x.shape[1], -1)], -1)


class PointNetSeg(nn.Module):
    """PointNet part segmenter: (B, N, 3) → logits (B, N, num_parts)."""

    def __init__(
        self,
        num_parts: int,
        width: int = 64,
        k: int = 20,
        use_normals: bool = False,
        dropout: float = 0.3,
        num_categories: int = 1,
    ) -> None:
        super().__init__()
        del k  # no neighbourhoods in PointNet; accepted for a uniform constructor
        self.use_normals = use_normals
        self.encoder = PointNetEncoder(6 if use_normals else 3, width)
        self.head = SegHead(self.encoder.out_channels, 4 * width, num_parts, dropout, num_categories)

    def forward(self, xyz: Tensor, normals: Tensor | None = None, category: Tensor | None = None) -> Tensor:
        return self.head(self.encoder(input_features(xyz, normals, self.use_normals)), category)
