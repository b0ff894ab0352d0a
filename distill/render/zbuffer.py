"""Torch z-buffer rasterisation of a mesh, and the packed depth|id keys it (and the point
splatter) reduce per pixel.

Faces are grouped by pixel footprint and every candidate (face, pixel) pair is tested in
one batch; the nearest candidate of each pixel wins by one ``scatter_reduce(amin)`` over
a packed depth|face key. It is the fallback when embreex is not installed; trimesh's own
fallback (rtree + numpy) is 100–1000× slower and runs out of memory at 256² (docs/design.md §7),
so it is never used. The slow reference is ``raycast_mesh_reference`` (``raycast.py``).
"""

from __future__ import annotations

import numpy as np
import torch

from distill.cameras import project
from distill.views import Cameras

_CHUNK = 1 << 21
"""Candidate (face or point, pixel) pairs per rasteriser batch: bounds memory (~60 MB)."""
NO_HIT = torch.iinfo(torch.int64).max
"""The key of a pixel where nothing landed."""


def float_key(depth: torch.Tensor, ident: torch.Tensor) -> torch.Tensor:
    """Pack a positive float32 depth and an id into one int64 whose order is the depth's.

    The bit pattern of a positive float32 orders as the float does, so the amin of the
    key is the nearest candidate, and the low 32 bits say which one it is.
    """
    bits = depth.to(torch.float32).view(torch.int32).to(torch.int64)
    return (bits << 32) | ident.to(torch.int64)


def unpack_key(key: torch.Tensor, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Packed keys → (depth float32 with ``inf`` where nothing landed, id int64 with −1 there)."""
    hit = key != NO_HIT
    ident = torch.where(hit, key & 0xFFFFFFFF, torch.full_like(key, -1))
    depth = (key >> 32).to(torch.int32).view(torch.float32).clone()
    depth[~hit] = float("inf")
    return depth.numpy().reshape(shape), ident.numpy().reshape(shape)


def _footprint_groups(width: np.ndarray, height: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
    """Group items by the powers of two ≥ their pixel footprint's width and height, so
    that a group's candidate grid wastes at most 4× the area it tests.

    width, height: (M,) ≥ 1 → [(grid width, grid height, member indices)].
    """
    pw = 1 << np.ceil(np.log2(np.maximum(width, 1))).astype(np.int64)
    ph = 1 << np.ceil(np.log2(np.maximum(height, 1))).astype(np.int64)
    key = pw * (1 << 20) + ph
    return [(int(k >> 20), int(k & ((1 << 20) - 1)), np.nonzero(key == k)[0]) for k in np.unique(key)]


def scan_groups(lo: np.ndarray, size: np.ndarray):
    """Yield, per footprint group and chunk, the members and their candidate pixels.

    lo, size: (M, 2) int first pixel (x, y) and footprint (width, height) → yields
    (members (K,) int64, xs (K, gw) int64, ys (K, gh) int64, in-footprint mask (K, gh, gw)).
    """
    for gw, gh, members in _footprint_groups(size[:, 0], size[:, 1]):
        gx, gy = torch.arange(gw), torch.arange(gh)
        per = max(1, _CHUNK // (gw * gh))
        for start in range(0, len(members), per):
            m = torch.from_numpy(members[start : start + per])
            lo_m = torch.from_numpy(lo[m.numpy()])
            size_m = torch.from_numpy(size[m.numpy()])
            xs = lo_m[:, 0, None] + gx[None, :]
            ys = lo_m[:, 1, None] + gy[None, :]
            valid = (gy[None, :, None] < size_m[:, 1, None, None]) & (gx[None, None, :] < size_m[:, 0, None, None])
            yield m, xs, ys, valid


def rasterize_mesh_torch(vertices: np.ndarray, faces: np.ndarray, cams: Cameras) -> tuple[np.ndarray, np.ndarray]:
    """Z-buffer rasterisation of pixel centres (perspective-correct depth).

    vertices: (P, 3) float32 · faces: (F, 3) int → depth: (V, S, S) float32 (``inf`` on
    background) · face_id: (V, S, S) int64 (−1 on background). Same outputs as
    ``raycast_mesh_embree`` up to ties on shared edges.
    """
    s, nv = cams.image_size, len(cams)
    uv_all, z_all = project(vertices, cams)
    keys = torch.full((nv * s * s,), NO_HIT, dtype=torch.int64)
    for v in range(nv):
        tuv = uv_all[v][faces].astype(np.float64)  # (F, 3, 2)
        tz = z_all[v][faces].astype(np.float64)  # (F, 3)
        # Faces crossing the camera plane cannot be projected; shapes sit well in front.
        ok = (tz > 1e-6).all(1) & np.isfinite(tuv).all((1, 2))
        lo = np.clip(np.ceil(np.nan_to_num(tuv.min(1)) - 0.5), 0, s - 1)  # first pixel centre ≥ min
        hi = np.clip(np.floor(np.nan_to_num(tuv.max(1)) - 0.5), -1, s - 1)  # last pixel centre ≤ max
        size = (hi - lo + 1).astype(np.int64)
        # Barycentric weight of vertex k as an affine function of the pixel centre:
        # w_k = (A_k x + B_k y + C_k) / area, from the edge opposite k (p → q).
        p = tuv[:, [1, 2, 0]]
        q = tuv[:, [2, 0, 1]]
        area = (tuv[:, 1, 0] - tuv[:, 0, 0]) * (tuv[:, 2, 1] - tuv[:, 0, 1]) - (tuv[:, 1, 1] - tuv[:, 0, 1]) * (
            tuv[:, 2, 0] - tuv[:, 0, 0]
        )
        ok &= (size > 0).all(1) & (np.abs(area) > 1e-12)
        fids = np.nonzero(ok)[0]
        if len(fids) == 0:
            continue
        p, q, ar = p[fids], q[fids], area[fids, None]
        coef_a = torch.from_numpy(-(q[..., 1] - p[..., 1]) / ar)  # (M, 3)
        coef_b = torch.from_numpy((q[..., 0] - p[..., 0]) / ar)
        coef_c = torch.from_numpy(((q[..., 1] - p[..., 1]) * p[..., 0] - (q[..., 0] - p[..., 0]) * p[..., 1]) / ar)
        inv_z = torch.from_numpy(1.0 / tz[fids])
        t_fid = torch.from_numpy(fids)
        for m, xs, ys, valid in scan_groups(lo[fids].astype(np.int64), size[fids]):
            cx, cy = xs.double() + 0.5, ys.double() + 0.5
            w = [
                (coef_a[m, k, None] * cx)[:, None, :] + (coef_b[m, k, None] * cy + coef_c[m, k, None])[:, :, None]
                for k in range(2)
            ]  # (K, gh, gw) each
            inside = valid & (w[0] >= 0) & (w[1] >= 0) & (w[0] + w[1] <= 1)
            mi, yi, xi = inside.nonzero(as_tuple=True)
            if len(mi) == 0:
                continue
            b0, b1 = w[0][mi, yi, xi], w[1][mi, yi, xi]
            iz = inv_z[m][mi]
            inv_depth = b0 * iz[:, 0] + b1 * iz[:, 1] + (1.0 - b0 - b1) * iz[:, 2]
            flat = v * s * s + ys[mi, yi] * s + xs[mi, xi]
            keys.scatter_reduce_(0, flat, float_key(1.0 / inv_depth, t_fid[m][mi]), reduce="amin")
    return unpack_key(keys, (nv, s, s))
