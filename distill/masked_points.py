"""Masked point modelling: the self-supervised objective that pretrains the student's encoder.

Point-MAE (Pang et al., ECCV 2022) and Point-M2AE (Zhang et al., NeurIPS 2022, the
encoder PartDistill's student sits on) cut a cloud into local patches, hide most of them
and train the network to reconstruct the hidden ones from the rest. To reconstruct a
hidden chair leg from what is left, a point's features must know its neighbourhood *and*
the shape around it, which is what a part segmenter needs and what no label is needed for.

Here the encoder is the student's own (PointNet++ by default), so a pretrained encoder
loads into the student tensor for tensor. One step, per cloud of N points:

1. ``G = N / group_size`` patch centres by farthest-point sampling; each patch is the
   ``group_size`` nearest points of its centre (Point-MAE's grouping).
2. ``mask_ratio`` of the patches are hidden. The encoder sees ``M = N − G_hidden ·
   group_size`` points drawn from the visible ones only (that many always remain, since
   the hidden patches hold at most ``G_hidden · group_size`` points), so no hidden point
   leaks in and the visible part keeps the cloud's point density.
3. For each hidden patch, the decoder reads the encoder's features interpolated at its
   centre from the visible points (PointNet++ feature propagation), the max-pooled shape
   feature and an embedding of the centre, and predicts the patch's ``group_size`` points
   relative to the centre.
4. The loss is the Chamfer distance (squared L2, both directions, Point-MAE's CD-L2)
   between each predicted and true patch, averaged over hidden patches.

Only the encoder is kept; the centre embedding and decoder are thrown away, as in MAE.
Pure torch, no IO.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from distill.student.layers import input_features
from distill.student.ops import farthest_point_sample, gather, knn, three_nn_interpolate


@dataclass(frozen=True)
class Masking:
    """How a cloud of ``num_points`` is cut and hidden: ``groups`` patches of ``group_size``
    points, ``hidden`` of them masked, ``visible`` points fed to the encoder."""

    num_points: int
    group_size: int
    mask_ratio: float

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise ValueError(f"group_size={self.group_size} must be >= 2")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={self.mask_ratio} must be in (0, 1)")
        if self.groups < 2 or not 1 <= self.hidden < self.groups or self.visible < 16:
            raise ValueError(
                f"{self.num_points} points in patches of {self.group_size} at mask ratio {self.mask_ratio} "
                f"leave {self.groups} patches, {self.hidden} hidden and {self.visible} visible points: "
                "use more points, smaller patches or a lower ratio"
            )

    @property
    def groups(self) -> int:
        return self.num_points // self.group_size

    @property
    def hidden(self) -> int:
        return max(1, round(self.mask_ratio * self.groups))

    @property
    def visible(self) -> int:
        return self.num_points - self.hidden * self.group_size


def chamfer_l2(pred: Tensor, target: Tensor) -> Tensor:
    """Squared-L2 Chamfer distance between point sets, one value per set.

    pred: (..., P, 3) · target: (..., Q, 3) → (...): mean over pred of the squared distance
    to the nearest target point, plus the same from target to pred.
    """
    d = (pred.unsqueeze(-2) - target.unsqueeze(-3)).square().sum(-1)  # (..., P, Q)
    return d.min(-1).values.mean(-1) + d.min(-2).values.mean(-1)


def mask_patches(xyz: Tensor, masking: Masking, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Cut and hide. xyz (B, N, 3) → (visible (B, M) point indices, hidden centres
    (B, G_h, 3), hidden patches (B, G_h, group_size, 3) relative to their centres).

    Draws (which patches hide, which visible points are kept) come from ``generator`` on
    the CPU, so a step is reproducible on any device.
    """
    b, n, _ = xyz.shape
    if n != masking.num_points:
        raise ValueError(f"clouds of {n} points, masking planned for {masking.num_points}")
    dev = xyz.device
    centres_idx = farthest_point_sample(xyz, masking.groups)  # (B, G)
    centres = gather(xyz, centres_idx)
    patch_idx, _ = knn(centres, xyz, masking.group_size)  # (B, G, K)
    order = torch.rand(b, masking.groups, generator=generator).argsort(1).to(dev)
    hidden = order[:, : masking.hidden]  # (B, G_h) patch indices
    hidden_idx = torch.gather(patch_idx, 1, hidden.unsqueeze(-1).expand(-1, -1, masking.group_size))
    masked = torch.zeros(b, n, dtype=torch.bool, device=dev)
    masked.scatter_(1, hidden_idx.reshape(b, -1), True)
    # Random keys, hidden points pushed past every visible one: the first M are visible.
    keys = torch.rand(b, n, generator=generator).to(dev) + masked.float() * 2.0
    visible = keys.argsort(1)[:, : masking.visible]
    hidden_centres = torch.gather(centres, 1, hidden.unsqueeze(-1).expand(-1, -1, 3))
    patches = gather(xyz, hidden_idx) - hidden_centres.unsqueeze(2)
    return visible, hidden_centres, patches


class MaskedPointModel(nn.Module):
    """An encoder (``(B, N, C_in) → (B, N, C)`` with ``out_channels``) and the decoder that
    reconstructs hidden patches from its features; ``forward`` returns the loss."""

    def __init__(self, encoder: nn.Module, masking: Masking, use_normals: bool = False, hidden: int = 256) -> None:
        super().__init__()
        self.encoder, self.masking, self.use_normals = encoder, masking, use_normals
        c = int(encoder.out_channels)
        self.centre_embed = nn.Sequential(nn.Linear(3, c), nn.GELU(), nn.Linear(c, c))
        self.decoder = nn.Sequential(
            nn.Linear(3 * c, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, 3 * masking.group_size),
        )
        # A patch spans ~ its nearest group_size of N points on a unit-size shape; the
        # decoder predicts in that unit so its outputs start at the right scale.
        self.patch_scale = math.sqrt(masking.group_size / masking.num_points)

    def forward(self, xyz: Tensor, generator: torch.Generator, normals: Tensor | None = None) -> Tensor:
        """xyz (B, N, 3) [normals (B, N, 3)] → the mean Chamfer loss of the hidden patches."""
        visible, centres, patches = mask_patches(xyz, self.masking, generator)
        vis_xyz = gather(xyz, visible)
        vis_normals = gather(normals, visible) if normals is not None and self.use_normals else None
        feat = self.encoder(input_features(vis_xyz, vis_normals, self.use_normals))  # (B, M, C)
        local = three_nn_interpolate(centres, vis_xyz, feat)  # (B, G_h, C)
        shape = feat.max(1, keepdim=True).values.expand(-1, centres.shape[1], -1)
        code = torch.cat([local, shape, self.centre_embed(centres)], -1)
        pred = self.decoder(code).reshape(*patches.shape) * self.patch_scale
        return chamfer_l2(pred.float(), patches.float()).mean()


__all__ = ["Masking", "MaskedPointModel", "chamfer_l2", "mask_patches"]
