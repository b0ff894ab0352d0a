"""Superpoints (a geometric over-segmentation by cut pursuit) and PartSLIP's superpoint vote.

Superpoints. As PartSLIP (CVPR 2023) does after Landrieu & Simonovsky's superpoint graph:
a directed kNN graph over the points (an edge from each point to each of its ``k`` nearest
other points, as PartSLIP's graph; mutual neighbours are thus joined twice, which we pass to
cut pursuit as one undirected edge of double weight: the same energy), node features
= the point normals (PartSLIP appends rgb · 0.3; we have no colour), and per edge uv with
3D length d and feature distance f = ||n_u − n_v||

    w_uv = (1 / (b + d / mean(d) + f / mean(f)))²,   b = ``edge_bias`` = 1

(b is PartSLIP's ``lambda_edge_weight`` = 1 in its ``gen_superpoint.py``; a mean of 0,
e.g. all edges between duplicate points, drops its term).
Cut pursuit (``cut_pursuit_py``, the ℓ0 / d0 "contour length" version) then minimises

    Σ_v ½ ||x_v − n_v||² + reg · Σ_{uv ∈ E : x_u ≠ x_v} w_uv

over piecewise-constant x; its constant connected components are the superpoints.
Components of ≤ ``min_size`` points are then merged, whole, into the component of the
nearest point (over all their points; PartSLIP looks from their first point only) that
belongs to a larger component; when no component is larger, nothing is merged. Labels are
renumbered 0..S−1 in order of first appearance. Deterministic: the graph is canonical
(sorted, deduplicated) and cut pursuit's k-means++ split uses a default-seeded generator
on every call. Normals are the given ones or, without them, ``estimate_normals`` (PCA of
16 neighbours, oriented away from the centroid; PartSLIP uses Open3D's unoriented ones).

Superpoint vote (``superpoint_vote``, the teacher-only baseline ``voting_superpoints``).
PartSLIP's rule, per superpoint i and part c:

    score(i, c) = Σ_v |{p ∈ SP_i : p seen in v, p inside some box of c in v}|
                  / Σ_v |{p ∈ SP_i : p seen in v}|

(a point inside two boxes of one part in one view counts once). A superpoint takes
argmax_c score(i, c) (ties → the lower part index) when that maximum is ≥ ``threshold``
(0.5), else it stays unlabelled (−1). Approximations and omissions:

- The units table does not store which points each view saw, so "p seen in v" is taken as
  "some unit of v, of any part and any score, covers p" (the ``seen`` of
  ``distill.evidence``). The true visible set is larger, so our scores are ≥ PartSLIP's:
  this changes which superpoints clear the threshold, never the argmax (the denominator
  is the same for every part).
- "Inside some box of c" counts the units of c with a positive score (as
  ``distill.voting`` does: a unit re-scored to 0 has no vote); a zero-scored unit still
  marks its points as seen.
- PartSLIP gives priority to a hard-coded list of small part names ("handle", "wheel",
  ...) when assigning superpoints. We deliberately do not: the list is specific to
  PartNet-E's categories.

Pure NumPy/SciPy + ``cut_pursuit_py``: no torch, no IO.
"""

from __future__ import annotations

from dataclasses import dataclass

import cut_pursuit_py
import numpy as np
from scipy.spatial import cKDTree

from distill.records import KnowledgeUnits, Shape
from distill.voting import check_units, fill_nearest


@dataclass(frozen=True)
class SuperpointConfig:
    """Cut-pursuit superpoints; the defaults are PartSLIP's."""

    k: int = 10  # neighbours per point in the kNN graph
    reg: float = 0.05  # regularisation strength of cut pursuit
    min_size: int = 10  # components of <= min_size points merge into the nearest larger one
    edge_bias: float = 1.0  # b in w = (1 / (b + d/mean d + f/mean f))²; PartSLIP's lambda_edge_weight

    def __post_init__(self) -> None:
        if self.k < 1 or self.reg <= 0 or self.min_size < 0 or self.edge_bias <= 0:
            raise ValueError(f"SuperpointConfig needs k >= 1, reg > 0, min_size >= 0, edge_bias > 0; got {self}")


def _check_points(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be (N, 3), got shape {points.shape}")
    if len(points) == 0:
        raise ValueError("points is empty (N == 0)")
    if not np.issubdtype(points.dtype, np.number) or not np.isfinite(points).all():
        raise ValueError("points must be finite numbers (found NaN, inf or a non-numeric dtype)")
    return points.astype(np.float64)


NORMAL_K = 16  # neighbours for ``estimate_normals`` when ``superpoints`` estimates them


def estimate_normals(points: np.ndarray, k: int = NORMAL_K) -> np.ndarray:
    """(N, 3) float64 unit normals: per point the smallest-eigenvalue eigenvector of the
    covariance of its k nearest neighbours (itself included; all N when N < k), signed to
    point away from the cloud's centroid. Vectorised: one ``np.linalg.eigh`` on (N, 3, 3)."""
    points = _check_points(points)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, len(points))
    _, idx = cKDTree(points).query(points, k=k)
    return _normals(points, np.asarray(idx).reshape(len(points), k))


def _normals(points: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``estimate_normals`` from the neighbour indices idx (N, k)."""
    nbrs = points[idx]  # (N, k, 3)
    centred = nbrs - nbrs.mean(axis=1, keepdims=True)
    cov = centred.transpose(0, 2, 1) @ centred / idx.shape[1]
    _, vecs = np.linalg.eigh(cov)  # eigenvalues ascending
    normals = vecs[:, :, 0]
    flip = np.einsum("ni,ni->n", normals, points - points.mean(axis=0)) < 0
    normals[flip] *= -1.0
    return normals / np.linalg.norm(normals, axis=1, keepdims=True)


def _knn_edges(dist: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The directed kNN graph from the k + 1 nearest (dist, idx: (N, k + 1), ascending),
    folded into undirected edges: (u, v, length, multiplicity), u < v, sorted by (u, v)
    (cut pursuit reads a forward star: edges sorted by source).

    Each point links to its k nearest other points; of its k + 1 nearest it drops itself, or
    its farthest when more than k duplicates of it hid it (never a self-loop). A pair linked
    both ways has multiplicity 2: in cut pursuit's energy two parallel edges of weight w are
    one of weight 2w, so this is PartSLIP's directed graph with half the edges (≈1.5× faster)."""
    n, k = idx.shape[0], idx.shape[1] - 1
    drop = idx == np.arange(n)[:, None]
    drop[~drop.any(axis=1), -1] = True
    keep = ~drop
    u = np.repeat(np.arange(n, dtype=np.int64), k)
    v = idx[keep].astype(np.int64)
    key = np.minimum(u, v) * n + np.maximum(u, v)
    key, first, mult = np.unique(key, return_index=True, return_counts=True)
    return key // n, key % n, dist[keep][first], mult


def _merge_small(labels: np.ndarray, points: np.ndarray, min_size: int) -> np.ndarray:
    """Each component of <= min_size points joins, whole, the component of the nearest point
    (over all its points) of a component larger than min_size; unchanged when none is."""
    sizes = np.bincount(labels)
    small = sizes[labels] <= min_size
    if not small.any() or small.all():
        return labels
    big = np.flatnonzero(~small)
    dist, nearest = cKDTree(points[big]).query(points[small])
    small_idx = np.flatnonzero(small)
    comp = labels[small_idx]
    order = np.lexsort((small_idx, dist, comp))  # per component: closest, then lowest index
    comp, nearest = comp[order], nearest[order]
    head = np.r_[True, comp[1:] != comp[:-1]]
    target = np.arange(len(sizes))
    target[comp[head]] = labels[big[nearest[head]]]
    return target[labels]


def _renumber(labels: np.ndarray) -> np.ndarray:
    """Labels → 0..S−1 int32 in order of first appearance."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[inverse.reshape(-1)].astype(np.int32)


def superpoints(
    points: np.ndarray, normals: np.ndarray | None = None, cfg: SuperpointConfig = SuperpointConfig()
) -> tuple[np.ndarray, str]:
    """Cut-pursuit superpoints (module docstring) → (labels (N,) int32 numbered 0..S−1 in
    order of first appearance, fallback reason; '' when none).

    normals: (N, 3) or None (then ``estimate_normals``). Degenerate geometry is a recorded
    fallback, never an exception: fewer than k + 1 points or all points coincident (extent
    < 1e-9) → every point its own superpoint; non-finite normals → re-estimated (still a
    segmentation). Bad arguments (points not (N, 3), N == 0, non-finite points, normals
    not (N, 3)) raise ValueError."""
    points = _check_points(points)
    n = len(points)
    if normals is not None:
        normals = np.asarray(normals)
        if normals.shape != points.shape:
            raise ValueError(f"normals must be (N, 3) = {points.shape} like points, got shape {normals.shape}")
        if not np.issubdtype(normals.dtype, np.number):
            raise ValueError(f"normals must be numbers, got dtype {normals.dtype}")
    if n < cfg.k + 1:
        return np.arange(n, dtype=np.int32), f"fallback: {n} points < k+1={cfg.k + 1}"
    if float(np.ptp(points, axis=0).max()) < 1e-9:
        return np.arange(n, dtype=np.int32), "fallback: all points coincide"
    # One kNN query serves the graph (k + 1 nearest) and, when needed, the normals.
    reason = ""
    if normals is not None and not np.isfinite(normals).all():
        normals, reason = None, "normals re-estimated: non-finite input normals"
    q = cfg.k + 1 if normals is not None else max(cfg.k + 1, min(NORMAL_K, n))
    dist, idx = cKDTree(points).query(points, k=q)
    if normals is None:
        normals = _normals(points, idx[:, : min(NORMAL_K, n)])
    features = np.ascontiguousarray(normals, dtype=np.float32)
    u, v, d, mult = _knn_edges(dist[:, : cfg.k + 1], idx[:, : cfg.k + 1])
    f = np.linalg.norm(features[u].astype(np.float64) - features[v], axis=1)
    d_mean, f_mean = np.average(d, weights=mult), np.average(f, weights=mult)  # over the directed edges
    denom = cfg.edge_bias + (d / d_mean if d_mean > 0 else 0.0) + (f / f_mean if f_mean > 0 else 0.0)
    weights = mult / denom**2
    labels = cut_pursuit_py.perform_cut_pursuit(
        float(cfg.reg),
        features.shape[1],
        features,
        np.ascontiguousarray(weights, dtype=np.float32),
        np.ascontiguousarray(u, dtype=np.uint32),
        np.ascontiguousarray(v, dtype=np.uint32),
        False,
    )
    labels = _merge_small(np.asarray(labels, np.int64), points, cfg.min_size)
    return _renumber(labels), reason


# --- PartSLIP's superpoint vote ------------------------------------------------------------


def _check_superpoints(units: KnowledgeUnits, superpoints: np.ndarray, num_parts: int) -> np.ndarray:
    sp = np.asarray(superpoints)
    fix = "the superpoint column does not match the cloud; recompute it (re-run ingest)"
    if sp.ndim != 1 or len(sp) == 0 or not np.issubdtype(sp.dtype, np.integer):
        raise ValueError(f"superpoints of {units.shape_id}: shape {sp.shape} dtype {sp.dtype}, not (N,) ints: {fix}")
    if sp.min() < 0:
        raise ValueError(f"superpoints of {units.shape_id}: negative ids: {fix}")
    if len(units.point_idx) and int(units.point_idx.max()) >= len(sp):
        raise ValueError(
            f"superpoints of {units.shape_id}: {len(sp)} entries but the units cover point "
            f"{int(units.point_idx.max())}: {fix}"
        )
    check_units(units, len(sp), num_parts)
    if len(units) and units.view.min() < 0:
        raise ValueError(f"units of {units.shape_id} have negative view indices")
    return sp.astype(np.int64)


def superpoint_scores(units: KnowledgeUnits, superpoints: np.ndarray, num_parts: int) -> np.ndarray:
    """(S, P) float64 in [0, 1]: PartSLIP's score(i, c) (module docstring), S = max id + 1
    (a superpoint no view saw scores 0). Vectorised over the (unit, point) pairs."""
    sp = _check_superpoints(units, superpoints, num_parts)
    n, p, s = len(sp), num_parts, int(sp.max()) + 1
    if len(units) == 0:
        return np.zeros((s, p))
    _, view = np.unique(units.view, return_inverse=True)
    pair_unit = np.repeat(np.arange(len(units)), np.diff(units.offsets))
    point = units.point_idx
    # Denominator: distinct (view, point) pairs, i.e. point-views seen.
    seen = np.unique(view[pair_unit] * n + point) % n
    den = np.bincount(sp[seen], minlength=s).astype(np.float64)
    # Numerator: distinct (view, part, point) triples of the units with a positive score.
    voting = units.score[pair_unit] > 0
    triple = np.unique((view[pair_unit] * p + units.label[pair_unit])[voting] * n + point[voting])
    inside = sp[triple % n] * p + (triple // n) % p
    num = np.bincount(inside, minlength=s * p).reshape(s, p).astype(np.float64)
    return np.divide(num, den[:, None], out=np.zeros((s, p)), where=den[:, None] > 0)


def superpoint_vote(
    units: KnowledgeUnits, superpoints: np.ndarray, num_parts: int, threshold: float = 0.5
) -> np.ndarray:
    """(N,) int64 part per point: its superpoint's argmax of ``superpoint_scores`` when the
    maximum is ≥ threshold (and > 0), else −1."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    scores = superpoint_scores(units, superpoints, num_parts)
    best = scores.max(axis=1)
    sp_label = np.where((best >= threshold) & (best > 0), scores.argmax(axis=1), -1)
    return sp_label[np.asarray(superpoints, np.int64)].astype(np.int64)


def superpoint_vote_nearest(
    units: KnowledgeUnits,
    points: np.ndarray,
    superpoints: np.ndarray,
    num_parts: int,
    threshold: float = 0.5,
) -> np.ndarray:
    """``superpoint_vote``, then every unlabelled point takes the label of its nearest
    labelled point (``distill.voting.fill_nearest``) → (N,) int64, all −1 when nothing is
    labelled."""
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be (N, 3), got shape {points.shape}")
    sp = np.asarray(superpoints)
    if sp.shape != (len(points),):
        raise ValueError(
            f"superpoints of {units.shape_id}: shape {sp.shape} but the cloud has {len(points)} points: "
            "the superpoint column does not match the cloud; recompute it (re-run ingest)"
        )
    return fill_nearest(superpoint_vote(units, sp, num_parts, threshold), points)


def superpoint_scores_reference(units: KnowledgeUnits, superpoints: np.ndarray, num_parts: int) -> np.ndarray:
    """``superpoint_scores`` as plain loops over views, superpoints and parts (for tests)."""
    sp = _check_superpoints(units, superpoints, num_parts)
    s = int(sp.max()) + 1
    num = np.zeros((s, num_parts))
    den = np.zeros(s)
    for view in sorted({int(x) for x in units.view}):
        seen: set[int] = set()
        inside: list[set[int]] = [set() for _ in range(num_parts)]
        for k in range(len(units)):
            if int(units.view[k]) != view:
                continue
            pts = {int(i) for i in units.unit_points(k)}
            seen |= pts
            if units.score[k] > 0:
                inside[int(units.label[k])] |= pts
        for i in seen:
            den[sp[i]] += 1
        for c in range(num_parts):
            for i in inside[c]:
                num[sp[i], c] += 1
    out = np.zeros((s, num_parts))
    for i in range(s):
        if den[i] > 0:
            out[i] = num[i] / den[i]
    return out


# --- stored with the shapes ------------------------------------------------------------------

SUPERPOINTS_META = "superpoints"
"""``Shape.meta`` key of a recorded fallback (``superpoints``' reason), absent when none."""


def attach_superpoints(shapes: list[Shape], cfg: SuperpointConfig = SuperpointConfig()) -> list[Shape]:
    """Give every shape without superpoints its own (in place; stored with the shape as
    the ``superpoints`` column, docs/data.md), recording any fallback in its meta."""
    for shape in shapes:
        if shape.superpoints is None:
            labels, reason = superpoints(shape.points, shape.normals, cfg)
            shape.superpoints = labels.astype(np.int64)
            if reason:
                shape.meta[SUPERPOINTS_META] = reason
    return shapes


def shape_superpoints(shape: Shape) -> np.ndarray:
    """A shape's stored superpoints, or (a table written before the column) computed now."""
    if shape.superpoints is not None:
        return shape.superpoints
    return superpoints(shape.points, shape.normals)[0].astype(np.int64)
