"""Pictures and coloured files of segmented shapes.

``segmentation_figure`` draws a shape's points coloured by part from several viewpoints in
one PNG with a legend (and, when ground truth exists, a second row with the truth), by
painter's-algorithm splatting with simple depth shading: no GPU, no display, no extra
packages beyond Pillow. ``colored_ply`` writes a PLY that trimesh (and MeshLab) open.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Distinct, colour-blind-friendly part colours (Okabe–Ito, then Tableau); grey = unlabelled.
PALETTE = np.array(
    [
        [230, 159, 0],
        [86, 180, 233],
        [0, 158, 115],
        [213, 94, 0],
        [204, 121, 167],
        [0, 114, 178],
        [240, 228, 66],
        [148, 103, 189],
        [140, 86, 75],
        [23, 190, 207],
        [188, 189, 34],
        [227, 119, 194],
    ],
    dtype=np.uint8,
)
UNLABELLED = np.array([170, 170, 170], np.uint8)


def part_colors(labels: np.ndarray) -> np.ndarray:
    """labels: (N,) int (−1 = unlabelled) → (N, 3) uint8 colours."""
    labels = np.asarray(labels)
    colors = PALETTE[np.mod(labels, len(PALETTE))]
    colors[labels < 0] = UNLABELLED
    return colors


def _rotation(elev_deg: float, azim_deg: float) -> np.ndarray:
    """World → view rotation (3, 3) for a camera at (elev, azim) around the y-up axis."""
    a, e = np.radians(azim_deg), np.radians(elev_deg)
    ry = np.array([[np.cos(a), 0, -np.sin(a)], [0, 1, 0], [np.sin(a), 0, np.cos(a)]])
    rx = np.array([[1, 0, 0], [0, np.cos(e), -np.sin(e)], [0, np.sin(e), np.cos(e)]])
    return rx @ ry


def splat_view(
    points: np.ndarray, colors: np.ndarray, elev: float, azim: float, size: int = 320, radius: int = 0
) -> Image.Image:
    """One orthographic view of coloured points on white.

    points: (N, 3) float in the unit sphere · colors: (N, 3) uint8 → an RGB image
    size×size. Far points are drawn first, near ones over them; nearer points are brighter.
    """
    if len(points) == 0:
        raise ValueError("splat_view: no points to draw")
    p = points @ _rotation(elev, azim).T
    order = np.argsort(p[:, 2])  # view looks down −z: larger z is nearer, so drawn last
    depth = (p[:, 2] - p[:, 2].min()) / max(np.ptp(p[:, 2]), 1e-6)
    shade = 0.6 + 0.4 * depth
    radius = radius or max(2, size // 110)
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    scale = size * 0.45
    for i in order:
        x = size / 2 + p[i, 0] * scale
        y = size / 2 - p[i, 1] * scale
        c = tuple(int(v) for v in np.clip(colors[i] * shade[i], 0, 255))
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=c)
    return img


VIEWS = ((20, 30), (20, 150), (60, 270))


def segmentation_figure(
    points: np.ndarray,
    pred: np.ndarray,
    part_names: list[str],
    truth: np.ndarray | None = None,
    title: str = "",
    size: int = 300,
) -> Image.Image:
    """Several views of a shape coloured by predicted part, with a legend.

    points: (N, 3) · pred: (N,) int · truth: (N,) int or None (adds a second row).
    """
    rows = [("prediction", pred)] + ([("ground truth", truth)] if truth is not None else [])
    font = ImageFont.load_default()
    legend_w, header = 190, 28
    width = size * len(VIEWS) + legend_w
    height = header + size * len(rows)
    fig = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(fig)
    draw.text((8, 8), title, fill="black", font=font)
    for r, (name, labels) in enumerate(rows):
        colors = part_colors(labels)
        for v, (elev, azim) in enumerate(VIEWS):
            fig.paste(splat_view(points, colors, elev, azim, size), (v * size, header + r * size))
        draw.text((4, header + r * size + 4), name, fill="black", font=font)
    x0 = size * len(VIEWS) + 12
    for k, part in enumerate(part_names):
        y = header + 10 + 22 * k
        color = tuple(int(c) for c in PALETTE[k % len(PALETTE)])
        draw.rectangle((x0, y, x0 + 16, y + 16), fill=color, outline="black")
        share = 100.0 * np.mean(pred == k)
        draw.text((x0 + 24, y + 3), f"{part} ({share:.0f}%)", fill="black", font=font)
    if np.any(pred < 0):
        y = header + 10 + 22 * len(part_names)
        draw.rectangle((x0, y, x0 + 16, y + 16), fill=tuple(int(c) for c in UNLABELLED), outline="black")
        draw.text((x0 + 24, y + 3), "unlabelled", fill="black", font=font)
    return fig


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def colored_ply(points: np.ndarray, labels: np.ndarray) -> bytes:
    """A binary PLY point cloud with per-vertex colours (by part) and a ``label`` property.

    points: (N, 3) float · labels: (N,) int.
    """
    points = np.asarray(points, np.float32)
    labels = np.asarray(labels, np.int32)
    if points.ndim != 2 or points.shape[1] != 3 or len(labels) != len(points):
        raise ValueError(f"colored_ply: points {points.shape} and labels {labels.shape} do not match")
    colors = part_colors(labels)
    vertex = np.empty(
        len(points),
        dtype=[
            ("x", "<f4"),
            ("y", "<f4"),
            ("z", "<f4"),
            ("red", "u1"),
            ("green", "u1"),
            ("blue", "u1"),
            ("label", "<i4"),
        ],
    )
    vertex["x"], vertex["y"], vertex["z"] = points.T
    vertex["red"], vertex["green"], vertex["blue"] = colors.T
    vertex["label"] = labels
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {len(points)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\n"
        "property int label\nend_header\n"
    )
    return header.encode() + vertex.tobytes()
