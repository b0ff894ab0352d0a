"""PointNet++ (single-scale grouping) part segmentation (Qi et al. 2017b), pure torch.

Set abstraction: farthest-point-sample centres, group neighbours within a radius (ball query
built on kNN), a shared MLP on [relative xyz / radius, neighbour feature], max over the
group. Feature propagation: inverse-distance interpolation back to the denser level plus a
skip connection. Grouping runs on N/4 and N/16 centres, so it is much cheaper than
EdgeConv on every point.

As in ``dgcnn``, the first layer of each group MLP is split so it runs per point, not per
(centre, neighbour) pair: W·[(x_j − c)/r, f_j] = (A·x_j/r + C·f_j) − A·c/r.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from distill.student.layers import SegHead, group_max, input_features, mlp
from distill.student.ops import ball_query, farthest_point_sample, fast_operators, gather, three_nn_interpolate

CATEGORY_CODE = 8
"""Width of the category code appended to each point's input (``student.category_input``)."""


class SetAbstraction(nn.Module):
    """(xyz (B, N, 3), feat (B, N, C)) → (centres (B, M, 3), feat (B, M, C_out))."""

    def __init__(self, ratio: int, radius: float, nsample: int, c_in: int, channels: list[int]) -> None:
        super().__init__()
        self.ratio, self.radius, self.nsample = ratio, radius, nsample
        self.pos = nn.Linear(3, channels[0], bias=False)
        self.feat = nn.Linear(c_in, channels[0], bias=False)
        self.norm = nn.BatchNorm1d(channels[0])
        self.rest = mlp(channels)

    def forward(self, xyz: Tensor, feat: Tensor) -> tuple[Tensor, Tensor]:
        b, n, _ = xyz.shape
        m = max(1, n // self.ratio)
        centres = gather(xyz, farthest_point_sample(xyz, m))
        idx = ball_query(centres, xyz, self.radius, min(self.nsample, n))
        proj = self.pos(xyz / self.radius) + self.feat(feat)  # (B, N, C0), once per point
        h = gather(proj, idx)  # (B, M, k, C0)
        c = h.shape[-1]
        if fast_operators():  # in place: the gather's output is fresh and its backward does not read it
            h.sub_(self.pos(centres / self.radius).unsqueeze(2))
            h = torch.relu_(self.norm(h.reshape(-1, c))).reshape(b, m, -1, c)
        else:
            h = h - self.pos(centres / self.radius).unsqueeze(2)
            h = torch.relu(self.norm(h.reshape(-1, c))).reshape(b, m, -1, c)
        return centres, group_max(self.rest(h), 2)


class FeaturePropagation(nn.Module):
    """Interpolate sparse features onto dense points and fuse with the dense skip features."""

    def __init__(self, channels: list[int]) -> None:
        super().__init__()
        self.mlp = mlp(channels)

    def forward(self, dense_xyz: Tensor, sparse_xyz: Tensor, dense_feat: Tensor, sparse_feat: Tensor) -> Tensor:
        if sparse_xyz.shape[1] == 1:  # global level: broadcast
            up = sparse_feat.expand(-1, dense_xyz.shape[1], -1)
        else:
            up = three_nn_interpolate(dense_xyz, sparse_xyz, sparse_feat)
        return self.mlp(torch.cat([up, dense_feat], -1))


class PointNet2Encoder(nn.Module):
    """xyz (+normals) (B, N, C_in) → per-point features (B, N, 2w)."""

    def __init__(self, c_in: int, width: int, k: int) -> None:
        super().__init__()
        w = width
        self.sa1 = SetAbstraction(4, 0.2, k, c_in, [w, w, 2 * w])
        self.sa2 = SetAbstraction(4, 0.4, 2 * k, 2 * w, [2 * w, 2 * w, 4 * w])
        self.sa3 = mlp([4 * w + 3, 4 * w, 8 * w, 16 * w])  # global set abstraction
        self.fp3 = FeaturePropagation([16 * w + 4 * w, 4 * w, 4 * w])
        self.fp2 = FeaturePropagation([4 * w + 2 * w, 4 * w, 2 * w])
        self.fp1 = FeaturePropagation([2 * w + c_in, 2 * w, 2 * w])
        self.out_channels = 2 * w

    def forward(self, x: Tensor) -> Tensor:
        xyz = x[..., :3]
        xyz1, f1 = self.sa1(xyz, x)
        xyz2, f2 = self.sa2(xyz1, f1)
        f3 = group_max(self.sa3(torch.cat([xyz2, f2], -1)), 1, keepdim=True)
        xyz3 = xyz2.mean(1, keepdim=True)
        f2 = self.fp3(xyz2, xyz3, f2, f3)
        f1 = self.fp2(xyz1, xyz2, f1, f2)
        return self.fp1(xyz, xyz1, x, f1)


class PointNet2Seg(nn.Module):
    """PointNet++ part segmenter: (B, N, 3) → logits (B, N, num_parts)."""

    def __init__(
        self,
        num_parts: int,
        width: int = 64,
        k: int = 20,
        use_normals: bool = False,
        dropout: float = 0.3,
        num_categories: int = 1,
        category_input: bool = False,
    ) -> None:
        super().__init__()
        self.use_normals = use_normals
        # Category conditioning of the encoder (student.category_input): a learned code of
        # the category appended to every point's input, so the geometry features are
        # computed knowing the category, not only classified knowing it.
        code = CATEGORY_CODE if category_input and num_categories > 1 else 0
        self.category_code = nn.Embedding(num_categories, code) if code else None
        self.encoder = PointNet2Encoder((6 if use_normals else 3) + code, width, k)
        self.head = SegHead(self.encoder.out_channels, 4 * width, num_parts, dropout, num_categories)

    def forward(self, xyz: Tensor, normals: Tensor | None = None, category: Tensor | None = None) -> Tensor:
        x = input_features(xyz, normals, self.use_normals)
        if self.category_code is not None:
            if category is None:
                raise ValueError("category (B,) is required by a category-conditioned student")
            x = torch.cat([x, self.category_code(category.long()).unsqueeze(1).expand(-1, x.shape[1], -1)], -1)
        return self.head(self.encoder(x), category)
