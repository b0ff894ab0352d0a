"""Torch splatting of a point cloud (no mesh), and its slow reference.

Every point is a screen-facing disk of radius ``point_radius`` (world units, projected to
pixels, at least ``MIN_SPLAT_PX`` so it always covers its own pixel centre) at the point's
depth, z-buffered with the mesh rasteriser's packed keys (``zbuffer.py``).
"""

from __future__ import annotations

import numpy as np
import torch

from distill.cameras import project, project_reference
from distill.render.zbuffer import NO_HIT, float_key, scan_groups, unpack_key
from distill.views import Cameras

MIN_SPLAT_PX = 0.71
"""Smallest splat radius in pixels: just above √½, so a disk covers its own pixel centre."""


def splat_points(points: np.ndarray, cams: Cameras, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Z-buffered disk splats of a point cloud.

    points: (N, 3) · radius: world units → depth: (V, S, S) float32 (``inf`` on
    background) · point_id: (V, S, S) int64, the nearest point whose disk covers the
    pixel centre (−1 on background).
    """
    if radius <= 0:
        raise ValueError(f"point_radius={radius} must be > 0")
    s, nv = cams.image_size, len(cams)
    uv_all, z_all = project(points, cams)
    keys = torch.full((nv * s * s,), NO_HIT, dtype=torch.int64)
    for v in range(nv):
        z = z_all[v].astype(np.float64)
        uv = uv_all[v].astype(np.float64)
        ok = (z > 1e-6) & np.isfinite(uv).all(1)
        r = np.where(ok, np.maximum(cams.focal[v] * radius / np.where(ok, z, 1.0), MIN_SPLAT_PX), 0.0)
        uv = np.nan_to_num(uv)
        lo = np.clip(np.ceil(uv - r[:, None] - 0.5), 0, s - 1)
        hi = np.clip(np.floor(uv + r[:, None] - 0.5), -1, s - 1)
        size = (hi - lo + 1).astype(np.int64)
        ok &= (size > 0).all(1)
        pids = np.nonzero(ok)[0]
        if len(pids) == 0:
            continue
        t_uv, t_r2 = torch.from_numpy(uv[pids]), torch.from_numpy(r[pids] ** 2)
        t_z, t_pid = torch.from_numpy(z[pids]), torch.from_numpy(pids)
        for m, xs, ys, valid in scan_groups(lo[pids].astype(np.int64), size[pids]):
            dx2 = (xs.double() + 0.5 - t_uv[m, 0, None]) ** 2  # (K, gw)
            dy2 = (ys.double() + 0.5 - t_uv[m, 1, None]) ** 2  # (K, gh)
            inside = valid & (dx2[:, None, :] + dy2[:, :, None] <= t_r2[m, None, None])
            mi, yi, xi = inside.nonzero(as_tuple=True)
            flat = v * s * s + ys[mi, yi] * s + xs[mi, xi]
            keys.scatter_reduce_(0, flat, float_key(t_z[m][mi], t_pid[m][mi]), reduce="amin")
    return unpack_key(keys, (nv, s, s))


def splat_points_reference(points: np.ndarray, cams: Cameras, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """``splat_points``' slow reference (docs/design.md §5.3, for tests): for every pixel, in plain
    Python, the nearest point whose disk (radius projected to pixels, at least
    ``MIN_SPLAT_PX``) covers the pixel centre. Use tiny images: cost is O(V·S²·N).

    → depth: (V, S, S) float64 · point_id: (V, S, S) int64.
    """
    s = cams.image_size
    uv, z = project_reference(points, cams)
    depth = np.full((len(cams), s, s), np.inf)
    point_id = np.full((len(cams), s, s), -1, np.int64)
    for v in range(len(cams)):
        r = np.maximum(float(cams.focal[v]) * radius / z[v], MIN_SPLAT_PX)
        for i in range(s):
            for j in range(s):
                d2 = (uv[v, :, 0] - (j + 0.5)) ** 2 + (uv[v, :, 1] - (i + 0.5)) ** 2
                cand = np.nonzero((d2 <= r * r) & (z[v] > 0))[0]
                if len(cand):
                    k = cand[np.argmin(z[v, cand])]
                    depth[v, i, j], point_id[v, i, j] = z[v, k], k
    return depth, point_id
