"""Small tools (Labeled PSB vocabularies): Glasses (lens, middle, skeleton) and Plier
(center, edge, handle).

Glasses face +z: two lenses in the xy plane, the rims and temples (``skeleton``) and the
bridge (``middle``). Pliers lie flat in the xz plane (thin along y), jaws towards +z.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from distill.records import Mesh
from generation.procedural.primitives import (
    MeshBuilder,
    circle_ring,
    cylinder_mesh,
    loft_mesh,
    placed,
    prism_mesh,
    rot_matrix,
    segment_mesh,
    tube_mesh,
)


def _lens_outline(rng: np.random.Generator, w: float, h: float) -> np.ndarray:
    """(K, 2) closed convex outline of a lens (x, y): ellipse, rounded rectangle or aviator drop."""
    t = np.linspace(0.0, 2.0 * np.pi, 24, endpoint=False)
    style = rng.integers(3)
    if style == 0:  # ellipse
        x, y = np.cos(t), np.sin(t)
    elif style == 1:  # rounded rectangle (superellipse)
        p = rng.uniform(0.3, 0.6)
        x, y = np.sign(np.cos(t)) * np.abs(np.cos(t)) ** p, np.sign(np.sin(t)) * np.abs(np.sin(t)) ** p
    else:  # aviator: wider at the top, a drop towards the outer bottom
        x, y = np.cos(t), np.sin(t) * (1.0 - 0.25 * (np.sin(t) < 0) * np.cos(t))
    return np.stack([x * w / 2, y * h / 2], 1)


def build_glasses(rng: np.random.Generator) -> tuple[Mesh, dict[str, Any]]:
    lens, middle, skeleton = range(3)
    b = MeshBuilder()
    w, h = rng.uniform(0.4, 0.6), rng.uniform(0.25, 0.45)
    gap = rng.uniform(0.12, 0.25)  # between the lenses' inner edges
    outline = _lens_outline(rng, w, h)
    t_lens = rng.uniform(0.02, 0.04)
    rim = rng.uniform(0.008, 0.02)
    rimless = rng.random() < 0.15
    cx = gap / 2 + w / 2
    # Lens slab in the xy plane: prism_mesh extrudes a (x, z) polygon along y, so turn it.
    for side in (-1.0, 1.0):
        poly = outline * [side, 1.0]
        v, f = prism_mesh(poly[::-1] if side < 0 else poly, t_lens)
        v = v @ rot_matrix("x", 90).T + [side * cx, 0.0, 0.0]
        b.add((v, f), lens)
        if not rimless:
            ring = np.concatenate([poly, poly[:1]]) * 1.04 + [side * cx, 0.0]
            path = np.stack([ring[:, 0], ring[:, 1], np.zeros(len(ring))], 1)
            b.add(tube_mesh(path, circle_ring(rim, 8)), skeleton)
    # Bridge: an arc over the nose between the lenses' inner edges.
    yb = h * rng.uniform(0.0, 0.3)
    arc = rng.uniform(0.02, 0.08)
    t = np.linspace(-1.0, 1.0, 7)
    xs = t * (gap / 2 + rim * 2 + 0.02)
    bridge = np.stack([xs, yb + arc * (1 - t**2), np.zeros_like(t)], 1)
    b.add(tube_mesh(bridge, circle_ring(rng.uniform(0.015, 0.03), 8)), middle)
    if rng.random() < 0.4:  # a second, straight bar above (double bridge)
        b.add(segment_mesh([-gap / 2 - 0.02, h * 0.42, 0], [gap / 2 + 0.02, h * 0.42, 0], rim, rim), middle)
    # Temples: from the outer corners straight back along −z, bent down behind the ear;
    # open, half folded or folded flat behind the lenses.
    fold = float(rng.choice([0.0, 0.0, 0.0, rng.uniform(20, 70), 90.0]))
    length = rng.uniform(0.9, 1.4)
    tt = rng.uniform(0.01, 0.02)
    hinge_y = h * rng.uniform(0.1, 0.35)
    for side in (-1.0, 1.0):
        hinge = np.array([side * (cx + w / 2 + rim), hinge_y, -0.02])
        d = rot_matrix("y", side * fold) @ np.array([0.0, 0.0, -1.0])
        bend = rng.uniform(0.12, 0.3)
        pts = [hinge, hinge + d * length * (1 - bend), hinge + d * length + [0.0, -bend * length * 0.6, 0.0]]
        path = np.stack([np.linspace(pts[0], pts[1], 6)[:-1], np.linspace(pts[1], pts[2], 6)[:-1]]).reshape(-1, 3)
        b.add(tube_mesh(np.concatenate([path, pts[2:]]), circle_ring(tt, 8) * [1.0, 1.6]), skeleton)
        b.add(segment_mesh(hinge - [side * 0.05, 0, 0], hinge, tt * 1.5, tt * 1.5), skeleton)  # end piece
    params = {"lens_width": w, "lens_height": h, "gap": gap, "rimless": rimless, "fold_deg": fold, "temple": length}
    return b.mesh(), params


def build_plier(rng: np.random.Generator) -> tuple[Mesh, dict[str, Any]]:
    center, edge, handle = range(3)
    b = MeshBuilder()
    jaw = rng.uniform(0.35, 0.9)  # jaw length (long-nose pliers: long and thin)
    grip = rng.uniform(1.1, 1.8)  # handle length
    open_deg = rng.uniform(0.0, 25.0)  # how far the jaws stand open
    spread = rng.uniform(8.0, 22.0)  # handles' half-angle beyond the jaw opening
    wj, wh = rng.uniform(0.1, 0.18), rng.uniform(0.07, 0.12)
    tk = rng.uniform(0.05, 0.09)  # thickness along y
    curve = rng.uniform(-0.15, 0.15)
    pivot_r = max(wj, wh) * rng.uniform(0.9, 1.3)
    for side in (-1.0, 1.0):
        # Jaw: from the pivot towards +z, tapering, tilted by half the opening.
        a = np.radians(side * open_deg / 2)
        tip = np.array([np.sin(a) * jaw, 0.0, np.cos(a) * jaw])
        u = np.array([np.cos(a), 0.0, -np.sin(a)])  # across the jaw, in the plane
        corners = [(1, 1), (1, -1), (-1, -1), (-1, 1)]
        rings = []
        for t in np.linspace(0.0, 1.0, 5):
            half = wj / 2 * (1.0 - 0.6 * t)
            rings.append(np.array([tip * t + u * half * sx + [0.0, tk / 2 * sy, 0.0] for sx, sy in corners]))
        b.add(loft_mesh(rings), edge)
        # Handle: from the pivot towards −z, spreading out, slightly curved; a thicker grip.
        ah = np.radians(side * (open_deg / 2 + spread))
        s = np.linspace(0.0, 1.0, 8)
        hx = np.sin(ah) * grip * s + side * curve * np.sin(np.pi * s) * 0.3
        hz = -np.cos(ah) * grip * s
        hpath = np.stack([hx, np.zeros_like(s), hz], 1)
        section = np.array([[-wh / 2, -tk / 2], [wh / 2, -tk / 2], [wh / 2, tk / 2], [-wh / 2, tk / 2]])
        if rng.random() < 0.6:  # rubber grips: a rounder, fatter section
            section = circle_ring(1.0, 10) * [wh * 0.7, tk * 0.8]
        b.add(tube_mesh(hpath[1:], section), handle)
    # Centre: the pivot boss, a disc along y, with the jaws' and handles' roots.
    b.add(placed(cylinder_mesh(pivot_r, pivot_r, tk * 1.3), at=(0.0, -tk * 0.65, 0.0)), center)
    b.add(placed(cylinder_mesh(pivot_r * 0.35, pivot_r * 0.35, tk * 1.6), at=(0.0, -tk * 0.8, 0.0)), center)
    params = {"jaw": jaw, "grip": grip, "open_deg": open_deg, "spread_deg": spread, "pivot_radius": pivot_r}
    return b.mesh(), params
