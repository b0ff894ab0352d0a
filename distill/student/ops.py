"""Pure-torch point-cloud operators: neighbour search, farthest point sampling, gathers.

No compiled extensions (pytorch3d / pointnet2_ops are not installable here), so every
operator is written with dense torch ops and chunked to bound memory. Each fast operator
has a slow, obviously correct ``*_reference`` beside it (DESIGN §5.3); the tests check
that they agree.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

# Pairwise-distance chunks hold at most this many float32 entries (~64 MiB): at N=2048 and
# batch 16 the full (B, N, N) matrix would be 256 MiB per call.
_CHUNK_ENTRIES = 1 << 24


def _check_cloud(name: str, x: Tensor) -> None:
    if x.dim() != 3:
        raise ValueError(f"{name} must be (B, N, D), got shape {tuple(x.shape)}")


def square_distance(query: Tensor, ref: Tensor) -> Tensor:
    """Squared Euclidean distances.

    query: (B, M, D) · ref: (B, N, D) → (B, M, N), clamped at 0 (the expansion
    |a|² + |b|² − 2ab can go slightly negative in float32).
    """
    d = torch.baddbmm(
        (query * query).sum(-1, keepdim=True) + (ref * ref).sum(-1).unsqueeze(1),
        query,
        ref.transpose(1, 2),
        alpha=-2.0,
    )
    return d.clamp_min_(0.0)


@torch.no_grad()
def knn(query: Tensor, ref: Tensor, k: int, chunk_entries: int = _CHUNK_ENTRIES) -> tuple[Tensor, Tensor]:
    """The k nearest ``ref`` points of every ``query`` point (itself included when shared).

    query: (B, M, D) · ref: (B, N, D) · k ≤ N → (idx (B, M, k) int64 into N, squared
    distances (B, M, k)), nearest first. Queries are processed in chunks of rows so that
    at most ``chunk_entries`` distances exist at once. No gradient flows (indices only).
    """
    _check_cloud("query", query)
    _check_cloud("ref", ref)
    if query.shape[0] != ref.shape[0] or query.shape[2] != ref.shape[2]:
        raise ValueError(f"query {tuple(query.shape)} and ref {tuple(ref.shape)} differ in batch or dimension")
    b, m, _ = query.shape
    n = ref.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be in [1, {n}] (the number of reference points)")
    rows = max(1, chunk_entries // max(1, b * n))
    idx_parts, dist_parts = [], []
    for start in range(0, m, rows):
        d = square_distance(query[:, start : start + rows], ref)
        dist, idx = d.topk(k, dim=-1, largest=False, sorted=True)
        idx_parts.append(idx)
        dist_parts.append(dist)
    return torch.cat(idx_parts, 1), torch.cat(dist_parts, 1)


def knn_reference(query: np.ndarray, ref: np.ndarray, k: int) -> np.ndarray:
    """Slow reference of ``knn``: one query point at a time, exact float64 distances.

    query: (B, M, D) · ref: (B, N, D) → (B, M, k) int64, nearest first (ties by index).
    """
    query = np.asarray(query, np.float64)
    ref = np.asarray(ref, np.float64)
    b, m, _ = query.shape
    out = np.zeros((b, m, k), np.int64)
    for bi in range(b):
        for i in range(m):
            d = ((ref[bi] - query[bi, i]) ** 2).sum(-1)
            out[bi, i] = np.argsort(d, kind="stable")[:k]
    return out


@torch.no_grad()
def ball_query(query: Tensor, ref: Tensor, radius: float, k: int, chunk_entries: int = _CHUNK_ENTRIES) -> Tensor:
    """Up to k ``ref`` points within ``radius`` of each query, padded with the nearest.

    query: (B, M, 3) · ref: (B, N, 3) → (B, M, k) int64. Neighbours farther than
    ``radius`` are replaced by the nearest neighbour (PointNet++'s padding), so the
    max-pool over the group sees only in-radius points. Built on ``knn``, hence the k
    *nearest* in-radius points rather than the first k in index order (no CUDA kernel).
    """
    idx, dist = knn(query, ref, min(k, ref.shape[1]), chunk_entries)
    far = dist > radius * radius
    idx = torch.where(far, idx[..., :1].expand_as(idx), idx)
    if idx.shape[-1] < k:  # fewer points than k: repeat the nearest
        idx = torch.cat([idx, idx[..., :1].expand(-1, -1, k - idx.shape[-1])], -1)
    return idx


def gather(x: Tensor, idx: Tensor) -> Tensor:
    """Per-batch row gather.

    x: (B, N, C) · idx: (B, *S) int64 into N → (B, *S, C).
    """
    if x.dim() != 3:
        raise ValueError(f"x must be (B, N, C), got shape {tuple(x.shape)}")
    if idx.shape[0] != x.shape[0]:
        raise ValueError(f"idx batch {idx.shape[0]} != x batch {x.shape[0]}")
    b, n, c = x.shape
    flat = idx.reshape(b, -1) + torch.arange(b, device=x.device).unsqueeze(1) * n
    # index_select, not x[flat]: its backward (index_add_) is deterministic on the CPU and
    # measured ~1.4x faster than advanced indexing's (index_put_ with accumulate).
    return x.reshape(b * n, c).index_select(0, flat.reshape(-1)).reshape(*idx.shape, c)


@torch.no_grad()
def farthest_point_sample(xyz: Tensor, m: int, start: Tensor | None = None) -> Tensor:
    """Farthest point sampling, all batch elements at once.

    xyz: (B, N, 3) · m ≤ N · start: (B,) int64 first index (default 0, deterministic)
    → (B, m) int64 indices into N. Each step picks the point farthest from those chosen
    (ties: lowest index, as ``argmax``).
    """
    _check_cloud("xyz", xyz)
    b, n, _ = xyz.shape
    if not 1 <= m <= n:
        raise ValueError(f"m={m} must be in [1, {n}] (the number of points)")
    out = torch.zeros(b, m, dtype=torch.long, device=xyz.device)
    far = torch.zeros(b, dtype=torch.long, device=xyz.device) if start is None else start.to(xyz.device).long()
    best = torch.full((b, n), float("inf"), device=xyz.device, dtype=xyz.dtype)
    rows = torch.arange(b, device=xyz.device)
    for i in range(m):
        out[:, i] = far
        d = ((xyz - xyz[rows, far].unsqueeze(1)) ** 2).sum(-1)
        best = torch.minimum(best, d)
        far = best.argmax(-1)
    return out


def farthest_point_sample_reference(xyz: np.ndarray, m: int) -> np.ndarray:
    """Slow reference of ``farthest_point_sample`` (start 0): explicit loops, float64.

    xyz: (B, N, 3) → (B, m) int64.
    """
    xyz = np.asarray(xyz, np.float64)
    b, n, _ = xyz.shape
    out = np.zeros((b, m), np.int64)
    for bi in range(b):
        chosen = [0]
        for _ in range(1, m):
            best_i, best_d = -1, -1.0
            for j in range(n):
                d = min(((xyz[bi, j] - xyz[bi, c]) ** 2).sum() for c in chosen)
                if d > best_d:
                    best_i, best_d = j, d
            chosen.append(best_i)
        out[bi] = chosen
    return out


def three_nn_interpolate(dense_xyz: Tensor, sparse_xyz: Tensor, sparse_feat: Tensor, k: int = 3) -> Tensor:
    """Inverse-distance interpolation of features from a sparse to a dense point set.

    dense_xyz: (B, N, 3) · sparse_xyz: (B, S, 3) · sparse_feat: (B, S, C) → (B, N, C).
    Weights 1/(d²+1e-8) over the k nearest sparse points, normalised (PointNet++ FP).
    """
    k = min(k, sparse_xyz.shape[1])
    idx, dist = knn(dense_xyz, sparse_xyz, k)
    w = 1.0 / (dist + 1e-8)
    w = w / w.sum(-1, keepdim=True)
    return (gather(sparse_feat, idx) * w.unsqueeze(-1)).sum(-2)
