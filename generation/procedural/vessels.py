"""Vessels (Labeled PSB vocabularies): Cup (body, handle) and Vase (base, body, handle,
spout, top).

Bodies are thick-walled surfaces of revolution about +y, open at the top; handles are tubes
swept along a C-shaped path on the +x side; a spout leans out on the −x side.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from distill.records import Mesh
from generation.procedural.primitives import MeshBuilder, circle_ring, revolve_profile, segment_mesh, tube_mesh


def _shell(radii: np.ndarray, ys: np.ndarray, wall: float) -> tuple:
    """An open-topped thick-walled shell: outer profile (radii, ys) up, inner one down.

    radii, ys: (K,) outer radius at each height, bottom to top (ys increasing).
    """
    outer = [(0.0, float(ys[0]))] + [(float(r), float(y)) for r, y in zip(radii, ys)]
    inner = [(max(float(r) - wall, wall * 0.5), float(y)) for r, y in zip(radii[::-1], ys[::-1])]
    inner[-1] = (inner[-1][0], float(ys[0]) + wall)
    return revolve_profile(outer + inner + [(0.0, float(ys[0]) + wall)])


def _handle(
    rng: np.random.Generator, x_top: float, y_top: float, x_bot: float, y_bot: float, reach: float, side: float = 1.0
) -> tuple:
    """A C- or D-shaped tube from (x_top, y_top) out by ``reach`` and back to (x_bot, y_bot) in the xy plane."""
    t = np.linspace(0.0, 1.0, 12)
    squared = rng.uniform(0.0, 1.0)  # 0: round C, 1: D with a straight outer side
    bulge = np.sin(np.pi * t) ** (1.0 - 0.7 * squared)
    x = (x_top + (x_bot - x_top) * t + reach * bulge) * side
    y = y_top + (y_bot - y_top) * t
    path = np.stack([x, y, np.zeros_like(t)], 1)
    thick = rng.uniform(0.04, 0.075)
    flat = rng.uniform(0.5, 1.0)  # flattened section: wider across than deep
    return tube_mesh(path, circle_ring(1.0, 10) * [thick * flat, thick])


def build_cup(rng: np.random.Generator) -> tuple[Mesh, dict[str, Any]]:
    body, handle = range(2)
    b = MeshBuilder()
    h = rng.uniform(0.6, 1.4)
    r_bottom = rng.uniform(0.3, 0.5)
    r_top = r_bottom * rng.uniform(0.85, 1.4)
    bulge = rng.uniform(-0.1, 0.2) * r_bottom  # barrel (> 0) or waisted (< 0)
    ys = np.linspace(0.0, h, 9)
    s = ys / h
    radii = r_bottom + (r_top - r_bottom) * s + bulge * np.sin(np.pi * s)
    wall = rng.uniform(0.02, 0.05)
    b.add(_shell(radii, ys, wall), body)
    has_handle = rng.random() < 0.9
    n_handles = 0
    if has_handle:
        n_handles = 2 if rng.random() < 0.1 else 1
        top_s, bot_s = rng.uniform(0.7, 0.92), rng.uniform(0.1, 0.45)
        reach = rng.uniform(0.22, 0.4) * h**0.5
        r_at = np.interp([top_s * h, bot_s * h], ys, radii) - wall * 0.5
        for side in (1.0, -1.0)[:n_handles]:
            b.add(_handle(rng, r_at[0], top_s * h, r_at[1], bot_s * h, reach, side), handle)
    params = {"height": h, "radius_bottom": r_bottom, "radius_top": r_top, "bulge": bulge, "handles": n_handles}
    return b.mesh(), params


def build_vase(rng: np.random.Generator) -> tuple[Mesh, dict[str, Any]]:
    base, body, handle, spout, top = range(5)
    b = MeshBuilder()
    h = rng.uniform(0.8, 1.8)  # body height
    r_max = rng.uniform(0.3, 0.6)
    belly = rng.uniform(0.25, 0.65)  # where the body is widest, as a fraction of its height
    r_foot, r_shoulder = r_max * rng.uniform(0.45, 0.85), r_max * rng.uniform(0.3, 0.7)
    ys = np.linspace(0.0, h, 11)
    s = ys / h
    # Piecewise-smooth profile: foot → belly (widest) → shoulder.
    up = np.clip(s / belly, 0, 1)
    down = np.clip((s - belly) / (1 - belly), 0, 1)
    radii = np.where(
        s <= belly,
        r_foot + (r_max - r_foot) * np.sin(up * np.pi / 2),
        r_max - (r_max - r_shoulder) * (1 - np.cos(down * np.pi / 2)),
    )
    wall = rng.uniform(0.025, 0.05)
    has_base = rng.random() < 0.55
    y0 = 0.0
    if has_base:  # a foot ring under the body, narrower or wider than its bottom
        bh = rng.uniform(0.06, 0.18) * h
        rb = r_foot * rng.uniform(0.7, 1.3)
        b.add(revolve_profile([(0.0, 0.0), (rb, 0.0), (rb * 0.95, bh * 0.4), (r_foot * 0.8, bh), (0.0, bh)]), base)
        y0 = bh
    b.add(revolve_profile([(0.0, y0)] + [(float(r), float(y + y0)) for r, y in zip(radii, ys)] + [(0.0, h + y0)]), body)
    # Top: neck and lip, an open shell from the shoulder up.
    nh = rng.uniform(0.12, 0.45) * h
    r_neck = r_shoulder * rng.uniform(0.6, 1.0)
    r_lip = r_neck * rng.uniform(0.9, 1.6)
    ts = np.linspace(0.0, 1.0, 6)
    neck_r = r_shoulder + (r_neck - r_shoulder) * np.sin(ts * np.pi / 2) + (r_lip - r_neck) * ts**3
    b.add(_shell(neck_r, h + y0 + nh * ts, wall), top)
    n_handles = int(rng.choice([0, 0, 1, 2, 2]))
    reach = rng.uniform(0.12, 0.3)
    y_top = h + y0 + nh * rng.uniform(0.3, 0.8)
    y_bot = y0 + h * rng.uniform(belly, 0.9)
    r_bot = float(np.interp(y_bot - y0, ys, radii))
    sides = (1.0, -1.0) if n_handles == 2 else (1.0,)
    for side in sides[:n_handles]:
        x_top = float(np.interp(y_top - h - y0, nh * ts, neck_r))
        b.add(_handle(rng, x_top, y_top, r_bot - wall, y_bot, reach + abs(r_bot - x_top) * 0.5, side), handle)
    has_spout = n_handles < 2 and rng.random() < 0.35
    if has_spout:  # a tapering tube leaning out of the shoulder on the −x side
        ys_ = y0 + h * rng.uniform(0.55, 0.85)
        rs = float(np.interp(ys_ - y0, ys, radii))
        ang = np.radians(rng.uniform(25, 60))
        length = rng.uniform(0.3, 0.6) * r_max + 0.15
        start = np.array([-rs * 0.8, ys_, 0.0])
        end = start + length * np.array([-np.cos(ang), np.sin(ang), 0.0])
        r0 = rng.uniform(0.07, 0.12)
        b.add(segment_mesh(start, end, r0, r0 * rng.uniform(0.4, 0.8)), spout)
    params = {"height": h, "radius": r_max, "belly": belly, "base": has_base, "neck": nh, "handles": n_handles}
    params |= {"spout": has_spout}
    return b.mesh(), params
