"""Shading of rasterised views: a grey two-sided Lambert surface (headlight + ambient) on
white, from the per-pixel item ids and the items' normals.
"""

from __future__ import annotations

import numpy as np

from distill.views import Cameras

AMBIENT = 0.2
"""Shade = AMBIENT + DIFFUSE · |cos(normal, view ray)|, on a [0, 1] scale."""
DIFFUSE = 0.65


def shade(cos: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """(V, S, S) |cos| and coverage → (V, S, S, 3) uint8 grey on white."""
    grey = np.where(covered, 255.0 * (AMBIENT + DIFFUSE * np.clip(cos, 0.0, 1.0)), 255.0)
    return np.repeat(np.round(grey).astype(np.uint8)[..., None], 3, axis=-1)


def covered_cos(cams: Cameras, item_id: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """|cos| between each pixel's ray and the normal of the item (face or point) seen
    there, 0 on background.

    item_id: (V, S, S) int64 (−1 background) · normals: (K, 3) unit world normals → (V, S, S) float32.
    """
    s = cams.image_size
    # Rotate the K normals into each camera, rather than every pixel's ray out of it; the
    # appended zero normal makes background (id −1) come out as 0.
    n_cam = np.einsum("vij,kj->vki", cams.world_to_cam[:, :3, :3], normals.astype(np.float32))
    n_cam = np.concatenate([n_cam, np.zeros((len(cams), 1, 3), np.float32)], axis=1)
    c = np.arange(s, dtype=np.float32) + 0.5 - s / 2.0
    cos = np.empty(item_id.shape, np.float32)
    for v in range(len(cams)):
        x = c[None, :] / cams.focal[v]  # (1, S) camera-space ray (x, y, −1)
        y = -c[:, None] / cams.focal[v]  # (S, 1)
        n = n_cam[v][item_id[v]]  # (S, S, 3)
        cos[v] = np.abs(n[..., 0] * x + n[..., 1] * y - n[..., 2]) / np.sqrt(x * x + y * y + 1.0)
    return cos


def shade_views(cams: Cameras, depth: np.ndarray, item_id: np.ndarray, normals: np.ndarray | None) -> np.ndarray:
    """The images of rasterised views.

    depth, item_id: (V, S, S) from a rasteriser (``inf`` / −1 on background) · normals:
    (K, 3) world normals of the K items, any length, or None → (V, S, S, 3) uint8.
    """
    covered = item_id >= 0
    if normals is not None:
        normals = normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
        # Two-sided headlight (|cos|): mesh orientation is not consistent across datasets.
        cos = covered_cos(cams, item_id, normals)
    else:
        # A point cloud without normals: shade by depth (near = bright) so it reads as 3D.
        seen = depth[covered]
        lo, hi = (float(seen.min()), float(seen.max())) if seen.size else (0.0, 1.0)
        cos = 1.0 - (np.where(covered, depth, hi) - lo) / max(hi - lo, 1e-6)
    return shade(cos, covered)
