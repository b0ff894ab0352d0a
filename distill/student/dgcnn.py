"""DGCNN part segmentation (Wang et al. 2019), channels-last, pure torch.

EdgeConv: for point i and its k neighbours j, h_ij = MLP([x_j − x_i, x_i]); the point's
feature is max_j h_ij. The first linear layer of each edge MLP is split,
W·[x_j − x_i, x_i] = A·x_j + B·x_i, so it runs once per point (N rows) rather than once
per edge (N·k rows) — k× fewer flops in the widest matmul, same function.

``dynamic=True`` recomputes the neighbourhood graph in feature space before the 2nd and
3rd EdgeConv (the paper); ``dynamic=False`` keeps the xyz graph throughout (cheaper: one
kNN per shape, and measured no worse on noisy knowledge, see bench/student.py).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from distill.student.layers import Dense, SegHead, activate, group_max, input_features
from distill.student.ops import gather, knn


class EdgeConv(nn.Module):
    """x (B, N, C_in), idx (B, N, k) → (B, N, C_out): max over neighbours of an edge MLP."""

    def __init__(self, c_in: int, c_out: int, layers: int = 2) -> None:
        super().__init__()
        self.nbr = nn.Linear(c_in, c_out, bias=False)  # A: acts on x_j
        self.ctr = nn.Linear(c_in, c_out, bias=False)  # B: acts on x_i
        self.norm = nn.BatchNorm1d(c_out)
        self.act = nn.LeakyReLU(0.2)
        self.rest = nn.Sequential(*[Dense(c_out, c_out, "leaky") for _ in range(layers - 1)])

    def forward(self, x: Tensor, idx: Tensor) -> Tensor:
        b, n, k = idx.shape
        edge = gather(self.nbr(x), idx).add_(self.ctr(x).unsqueeze(2))  # (B, N, k, C_out), gather's fresh output
        c = edge.shape[-1]
        edge = activate(self.act, self.norm(edge.reshape(-1, c))).reshape(b, n, k, c)
        return group_max(self.rest(edge), 2)


class DGCNNEncoder(nn.Module):
    """xyz (+normals) (B, N, C_in) → per-point features (B, N, 3w + 16w)."""

    def __init__(self, c_in: int, width: int, k: int, dynamic: bool) -> None:
        super().__init__()
        self.k = k
        self.dynamic = dynamic
        self.edge1 = EdgeConv(c_in, width, 2)
        self.edge2 = EdgeConv(width, width, 2)
        self.edge3 = EdgeConv(width, width, 1)
        self.embed = Dense(3 * width, 16 * width, "leaky")
        self.out_channels = 3 * width + 16 * width

    def forward(self, x: Tensor) -> Tensor:
        k = min(self.k, x.shape[1])
        idx, _ = knn(x[..., :3], x[..., :3], k)
        x1 = self.edge1(x, idx)
        if self.dynamic:
            idx, _ = knn(x1, x1, k)
        x2 = self.edge2(x1, idx)
        if self.dynamic:
            idx, _ = knn(x2, x2, k)
        x3 = self.edge3(x2, idx)
        local = torch.cat([x1, x2, x3], -1)
        g = group_max(self.embed(local), 1, keepdim=True)
        return torch.cat([local, g.expand(-1, x.shape[1], -1)], -1)


class DGCNNSeg(nn.Module):
    """DGCNN part segmenter: (B, N, 3) → logits (B, N, num_parts)."""

    def __init__(
        self,
        num_parts: int,
        width: int = 64,
        k: int = 20,
        use_normals: bool = False,
        dropout: float = 0.3,
        num_categories: int = 1,
        dynamic: bool = True,
    ) -> None:
        super().__init__()
        self.use_normals = use_normals
        self.encoder = DGCNNEncoder(6 if use_normals else 3, width, k, dynamic)
        self.head = SegHead(self.encoder.out_channels, 4 * width, num_parts, dropout, num_categories)

    def forward(self, xyz: Tensor, normals: Tensor | None = None, category: Tensor | None = None) -> Tensor:
        return self.head(self.encoder(input_features(xyz, normals, self.use_normals)), category)
