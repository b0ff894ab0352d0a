"""What the renderer hands to teachers and to back-projection (one shape, V views)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Cameras:
    """V pinhole cameras looking at the origin (OpenGL look-at convention).

    eye: (V, 3) float32 world positions · world_to_cam: (V, 4, 4) float32 (camera looks
    down −z, y up) · focal: (V,) float32 focal length in pixels · image_size: H = W pixels
    · elev_azim: (V, 2) float32 degrees, for the record.
    """

    eye: np.ndarray
    world_to_cam: np.ndarray
    focal: np.ndarray
    image_size: int
    elev_azim: np.ndarray

    def __len__(self) -> int:
        return len(self.eye)


@dataclass
class RenderedViews:
    """V rendered views of one shape and where its N student points land in them.

    images: (V, H, W, 3) uint8, shaded grey surface on white · depth: (V, H, W) float32
    camera-space distance along the view axis, ``inf`` on background · pixel_labels:
    (V, H, W) int16 ground-truth part of the surface seen at each pixel (−1 background or
    unknown; used only by the simulated teacher and by tests) · point_uv: (V, N, 2) float32
    pixel coordinates (x = column, y = row, pixel centres at +0.5) · point_visible: (V, N)
    bool, the point survives the depth test in that view and lies inside the image.
    """

    images: np.ndarray
    depth: np.ndarray
    pixel_labels: np.ndarray
    point_uv: np.ndarray
    point_visible: np.ndarray
    cameras: Cameras

    @property
    def num_views(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    @property
    def shape_masks(self) -> np.ndarray:
        """(V, H, W) bool: pixels covered by the shape."""
        return np.isfinite(self.depth)
