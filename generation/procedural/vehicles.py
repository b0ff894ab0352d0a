"""Vehicles and long objects (ShapeNetPart vocabularies): Airplane, Rocket, Guitar, Skateboard, Car."""

from __future__ import annotations

from typing import Any

import numpy as np

from distill.records import Mesh
from generation.procedural.primitives import (
    SECTIONS,
    MeshBuilder,
    box_mesh,
    circle_ring,
    cylinder_mesh,
    loft_mesh,
    mirror_x,
    placed,
    prism_mesh,
    revolve_profile,
    rot_matrix,
    tube_mesh,
)


def _wing(root: float, tip: float, span: float, sweep: float, thick: float) -> tuple:
    """A trapezoid slab in the xz plane: root chord along z at x=0, tip at x=span."""
    poly = np.array([[0.0, 0.0], [span, -sweep], [span, -sweep - tip], [0.0, -root]])
    return prism_mesh(poly, thick)


def build_airplane(rng: np.random.Generator) -> tuple[Mesh, dict[str, Any]]:
    body, wing, tail, engine = range(4)
    b = MeshBuilder()
    length, r = rng.uniform(3.0, 4.5), rng.uniform(0.16, 0.28)
    nose = r * rng.uniform(1.5, 3.0)
    tail_len = length * rng.uniform(0.2, 0.3)
    # Fuselage along z (nose at +z): ellipsoidal nose, cylinder, tail cone swept upwards.
    # (z, radius, centre height) from the nose tip backwards.
    stations = [(length / 2 - nose + nose * np.cos(a), r * np.sin(a), 0.0) for a in np.linspace(0, np.pi / 2, 6)[1:]]
    stations.append((-length / 2 + tail_len, r, 0.0))
    for s in np.linspace(0, 1, 5)[1:]:
        stations.append((-length / 2 + tail_len * (1 - s), r * (1 - 0.75 * s), r * 0.6 * s))
    circle = circle_ring(1.0, SECTIONS)
    rings = [np.array([[0.0, 0.0, length / 2]])]
    for z, rr, yc in stations:
        rings.append(np.stack([rr * circle[:, 0], yc + rr * circle[:, 1], np.full(len(circle), z)], 1))
    b.add(loft_mesh(rings), body)
    # Wings.
    span = rng.uniform(1.2, 2.0)
    root = rng.uniform(0.5, 0.9)
    tip = root * rng.uniform(0.3, 0.6)
    sweep = rng.uniform(0.1, 0.8)
    thick = rng.uniform(0.04, 0.07)
    wy = r * rng.uniform(-0.5, 0.3)
    wz = rng.uniform(0.05, 0.25) * length
    dihedral = rng.uniform(0, 6)
    for mirror in (False, True):
        prim = placed(_wing(root, tip, span, sweep, thick), rot_matrix("z", dihedral), at=(r * 0.7, wy, wz))
        b.add(mirror_x(prim) if mirror else prim, wing)
    # Tail: horizontal stabilisers and a vertical fin (T-tail puts the stabilisers on top).
    fin_h = rng.uniform(0.5, 0.9)
    fin_root, fin_sweep = rng.uniform(0.5, 0.8), rng.uniform(0.2, 0.5)
    tail_z = -length / 2 + fin_root + 0.05
    fin_poly = np.array([[0.0, 0.0], [fin_h, -fin_sweep], [fin_h, -fin_sweep - fin_root * 0.5], [0.0, -fin_root]])
    # Slab in the yz plane: build in xz (x = height), then rotate x → y.
    fin = placed(prism_mesh(fin_poly, thick), rot_matrix("z", 90), at=(0, r * 0.5, tail_z))
    b.add(fin, tail)
    t_tail = rng.random() < 0.2
    st_span, st_root = rng.uniform(0.5, 0.9), rng.uniform(0.3, 0.5)
    st_y = r * 0.5 + fin_h * 0.95 if t_tail else r * 0.5
    st_z = tail_z - fin_sweep if t_tail else tail_z
    for mirror in (False, True):
        prim = placed(_wing(st_root, st_root * 0.5, st_span, st_root * 0.5, thick * 0.8), at=(0.02, st_y, st_z))
        b.add(mirror_x(prim) if mirror else prim, tail)
    # Engines: nacelles under the wings (2 or 4), or 2 on the rear fuselage.
    rear = rng.random() < 0.15
    n_eng = 2 if rear or rng.random() < 0.65 else 4
    nr, nl = rng.uniform(0.1, 0.16), rng.uniform(0.5, 0.8)
    nacelle = placed(cylinder_mesh(nr * 0.9, nr, nl), rot_matrix("x", 90))  # along +z from z=0
    positions = []
    if rear:
        for sx in (-1, 1):
            positions.append(((sx * (r + nr + 0.05), r * 0.5, -length / 2 + tail_len + 0.1 + nl), None))
            # A horizontal pylon from the fuselage side to the nacelle.
            pz = -length / 2 + tail_len + 0.1 + nl * 0.5
            b.add(placed(box_mesh((nr + 0.1, 0.04, nl * 0.5)), at=(sx * (r + (nr + 0.05) / 2 - 0.05), r * 0.5, pz)), engine)
    else:
        fracs = [0.35] if n_eng == 2 else [0.3, 0.62]
        for f in fracs:
            x = r * 0.7 + span * f
            le = wz - sweep * f  # leading edge at this span
            y = wy + x * np.tan(np.radians(dihedral)) - thick / 2 - nr - 0.04
            for sx in (-1, 1):
                positions.append(((sx * x, y, le + nl * 0.4), (sx * x, y + nr, le - root * 0.3)))
    for (x, y, z), pylon in positions:
        v, f = nacelle
        b.add((v + [x, y, z - nl], f), engine)
        if pylon is not None:  # a pylon joins the nacelle to the wing
            b.add(placed(box_mesh((0.03, 0.08, root * 0.5)), at=(pylon[0], pylon[1] + 0.03, z - nl * 0.5)), engine)
    params = {"length": length, "radius": r, "span": span, "sweep": sweep, "engines": n_eng, "rear_engines": rear}
    params |= {"t_tail": t_tail}
    return b.mesh(), params


def build_rocket(rng: np.random.Generator) -> tuple[Mesh, dict[str, Any]]:
    body, fin, nose = range(3)
    b = MeshBuilder()
    r, length = rng.uniform(0.15, 0.3), rng.uniform(1.8, 3.2)
    staged = rng.random() < 0.3
    if staged:  # a wider lower stage, a conical adapter, a narrower upper stage
        r2 = r * rng.uniform(0.65, 0.85)
        low = length * rng.uniform(0.4, 0.6)
        b.add(revolve_profile([(0, 0), (r, 0), (r, low), (r2, low + r * 0.6), (r2, length), (0, length)]), body)
        r_top = r2
    else:
        b.add(cylinder_mesh(r, r, length), body)
        r_top = r
    if rng.random() < 0.5:  # engine bell
        b.add(placed(cylinder_mesh(r * 0.7, r * 0.4, r * 0.5), rot_matrix("x", 180)), body)
    boosters = int(rng.choice([0, 0, 2, 4]))
    for i in range(boosters):
        br = r * 0.35
        p = rot_matrix("y", 360.0 * i / boosters + 45) @ [r + br, 0, 0]
        b.add(placed(revolve_profile([(0, 0), (br, 0), (br, length * 0.45), (0, length * 0.45 + br * 2.5)]), at=p), body)
    nh = r_top * rng.uniform(2.5, 4.5)
    k = rng.uniform(0.5, 1.0)  # 1: straight cone; < 1: ogive
    b.add(
        revolve_profile(
            [(0, length)]
            + [(r_top * (1 - s) ** k, length + nh * s) for s in np.linspace(0, 1, 8)[:-1]]
            + [(0, length + nh)]
        ),
        nose,
    )
    n_fins = int(rng.choice([3, 4, 4, 6]))
    root, span = rng.uniform(0.45, 0.8), rng.uniform(0.25, 0.5)
    tip, sweep = root * rng.uniform(0.2, 0.6), rng.uniform(0.1, 0.4)
    thick = rng.uniform(0.03, 0.05)
    # Fin planform in (radial, height): root along the body from y=0 up to y=root.
    poly = np.array([[0.0, root], [span, root - sweep], [span, root - sweep - tip], [0.0, 0.0]])
    for i in range(n_fins):
        ang = 360.0 * i / n_fins + (0 if boosters == 0 else 22.5)
        v, f = prism_mesh(poly[:, [0, 1]], thick)  # xz plane, extruded along y
        v = v @ rot_matrix("x", -90).T  # z → y (height), y → thickness along −z
        v = v + [r * 0.95, -0.05, 0]
        b.add((v @ rot_matrix("y", ang).T, f), fin)
    params = {"radius": r, "length": length, "staged": staged, "boosters": boosters, "fins": n_fins, "nose": nh}
    return b.mesh(), params


def build_guitar(rng: np.random.Generator) -> tuple[Mesh, dict[str, Any]]:
    head, neck, body = range(3)
    b = MeshBuilder()
    electric = rng.random() < 0.4
    thick = rng.uniform(0.1, 0.15) if electric else rng.uniform(0.22, 0.35)
    lower_w, lower_h = rng.uniform(0.45, 0.6), rng.uniform(0.45, 0.6)
    ratio = rng.uniform(0.7, 0.85)
    upper_w, upper_h = lower_w * ratio, lower_h * ratio
    upper_y = lower_h * rng.uniform(0.9, 1.15)
    slab = placed(cylinder_mesh(1.0, 1.0, thick, 28), rot_matrix("x", 90), at=(0, 0, -thick / 2))  # disc facing +z
    for sx, sy, cy in ((lower_w, lower_h, 0.0), (upper_w, upper_h, upper_y)):
        v, f = slab
        b.add((v * [sx, sy, 1.0] + [0, cy, 0], f), body)
    if electric and rng.random() < 0.7:  # a cutaway horn
        v, f = slab
        b.add((v * [upper_w * 0.35, upper_h * 0.6, 1.0] + [-upper_w * 0.8, upper_y + upper_h * 0.6, 0], f), body)
    nw, nl, nt = rng.uniform(0.1, 0.14), rng.uniform(1.2, 1.7), rng.uniform(0.05, 0.08)
    neck_y0 = upper_y + upper_h * 0.6
    b.add(placed(box_mesh((nw, nl, nt)), at=(0, neck_y0 + nl / 2, thick / 2)), neck)
    hl, hw = rng.uniform(0.3, 0.45), nw * rng.uniform(1.3, 1.8)
    tilt = rng.uniform(0, 15)
    pivot = np.array([0, neck_y0 + nl, thick / 2])
    hv, hf = placed(box_mesh((hw, hl, nt * 0.8)), at=(0, hl / 2, 0))
    b.add((hv @ rot_matrix("x", -tilt).T + pivot, hf), head)
    pegs = 6
    for i in range(pegs):
        side = -1 if i < pegs // 2 else 1
        yy = hl * (0.2 + 0.6 * (i % (pegs // 2)) / max(pegs // 2 - 1, 1))
        pv, pf = placed(cylinder_mesh(0.018, 0.018, 0.1, 10), rot_matrix("z", -90 * side), at=(side * hw / 2, yy, 0))
        b.add((pv @ rot_matrix("x", -tilt).T + pivot, pf), head)
    params = {
        "electric": electric,
        "thickness": thick,
        "lower_width": lower_w,
        "neck_length": nl,
        "head_tilt_deg": tilt,
    }
    return b.mesh(), params


def build_skateboard(rng: np.random.Generator) -> tuple[Mesh, dict[str, Any]]:
    wheel, deck, belt = range(3)
    b = MeshBuilder()
    length, width, thick = rng.uniform(2.0, 2.6), rng.uniform(0.55, 0.75), rng.uniform(0.03, 0.05)
    kick = rng.uniform(10, 25)
    flat = length * rng.uniform(0.3, 0.36)  # half-length of the flat middle
    # Deck: a loft of rectangles along z, bent up at both ends, rounded tips.
    rings = []
    zs = np.linspace(-length / 2, length / 2, 25)
    for z in zs:
        over = max(abs(z) - flat, 0.0)
        y = over * np.tan(np.radians(kick))
        tip = length / 2 - flat
        half_w = width / 2 * np.sqrt(max(1 - (over / tip) ** 4, 0.05))
        rings.append(np.array([[half_w, y, z], [half_w, y + thick, z], [-half_w, y + thick, z], [-half_w, y, z]]))
    b.add(loft_mesh(rings), deck)
    wr, ww = rng.uniform(0.07, 0.1), rng.uniform(0.06, 0.09)
    truck_z = flat * rng.uniform(0.75, 0.95)
    track = width / 2 * rng.uniform(0.75, 0.95)
    axle_y = -wr - rng.uniform(0.06, 0.1)
    for sz in (-1, 1):
        z = sz * truck_z
        b.add(placed(box_mesh((0.18, -axle_y, 0.12)), at=(0, axle_y / 2, z)), wheel)  # truck hanger
        b.add(placed(cylinder_mesh(0.015, 0.015, 2 * track), rot_matrix("z", 90), at=(track, axle_y, z)), wheel)  # axle
        for sx in (-1, 1):
            b.add(
                placed(cylinder_mesh(wr, wr, ww), rot_matrix("z", 90), at=(sx * track + (ww if sx > 0 else 0), axle_y, z)), wheel
            )
    straps = 0 if rng.random() < 0.5 else int(rng.integers(1, 3))
    sw, sh = rng.uniform(0.1, 0.16), rng.uniform(0.08, 0.14)
    for i in range(straps):
        z = (0.0 if straps == 1 else (-0.5 + i) * flat) + rng.uniform(-0.1, 0.1)
        a = np.linspace(0, np.pi, 12)
        path = np.stack([width * 0.42 * np.cos(a), thick + sh * np.sin(a), np.full_like(a, z)], 1)
        section = np.array([[-sw / 2, -0.012], [sw / 2, -0.012], [sw / 2, 0.012], [-sw / 2, 0.012]])
        b.add(tube_mesh(path, section), belt)
    params = {"length": length, "width": width, "kick_deg": kick, "wheel_radius": wr, "straps": straps}
    return b.mesh(), params


def build_car(rng: np.random.Generator) -> tuple[Mesh, dict[str, Any]]:
    roof, hood, wheel, body = range(4)
    b = MeshBuilder()
    length, width = rng.uniform(3.6, 4.8), rng.uniform(1.6, 1.9)
    wr, ww = rng.uniform(0.3, 0.4), rng.uniform(0.2, 0.28)
    y0 = wr * rng.uniform(0.5, 0.7)
    hb = rng.uniform(0.45, 0.65)
    y1 = y0 + hb
    # Lower body: side profile (z, y) extruded across x, front and rear slanted.
    fs, rs = rng.uniform(0.1, 0.3), rng.uniform(0.05, 0.25)
    prof = np.array(
        [
            [length / 2 - fs, y0],
            [length / 2, y0 + hb * 0.5],
            [length / 2 - fs * 0.5, y1],
            [-length / 2 + rs * 0.5, y1],
            [-length / 2, y0 + hb * 0.5],
            [-length / 2 + rs, y0],
        ]
    )
    # prism_mesh extrudes along y with the polygon as (x, z); map (z, y) → rotate afterwards.
    v, f = prism_mesh(prof[:, [1, 0]], width)  # polygon axes: x ← y, z ← z; thickness along y
    v = v[:, [1, 0, 2]]  # swap: thickness → x, profile height → y
    b.add((v, f), body)
    # Cabin (windows and pillars, body) with the roof panel on top.
    hc = rng.uniform(0.4, 0.6)
    cab_len = length * rng.uniform(0.38, 0.5)
    cab_z = rng.uniform(-0.15, 0.05) * length
    front_slope, rear_slope = cab_len * rng.uniform(0.15, 0.3), cab_len * rng.uniform(0.08, 0.25)
    top0, top1 = cab_z - cab_len / 2 + rear_slope, cab_z + cab_len / 2 - front_slope
    cab = np.array([[cab_z + cab_len / 2, y1], [top1, y1 + hc], [top0, y1 + hc], [cab_z - cab_len / 2, y1]])
    v, f = prism_mesh(cab[:, [1, 0]], width * 0.9)
    b.add((v[:, [1, 0, 2]], f), body)
    rt = 0.04
    b.add(placed(box_mesh((width * 0.92, rt, (top1 - top0) * 1.06)), at=(0, y1 + hc + rt / 2, (top0 + top1) / 2)), roof)
    hood_front = length / 2 - fs * 0.5
    hood_back = cab_z + cab_len / 2
    b.add(
        placed(box_mesh((width * 0.96, rt, hood_front - hood_back)), at=(0, y1 + rt / 2, (hood_front + hood_back) / 2)),
        hood,
    )
    axle = length / 2 - rng.uniform(0.6, 0.9)
    for sz in (-1, 1):
        for sx in (-1, 1):
            x = sx * (width / 2 - ww / 2 + 0.03)
            b.add(placed(cylinder_mesh(wr, wr, ww, 24), rot_matrix("z", 90), at=(x + ww / 2, wr, sz * axle)), wheel)
    params = {"length": length, "width": width, "wheel_radius": wr, "cabin_length": cab_len, "body_height": hb}
    return b.mesh(), params
