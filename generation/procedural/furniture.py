"""Furniture and lamps (ShapeNetPart vocabularies): Chair, Table, Lamp."""

from __future__ import annotations

from typing import Any

import numpy as np

from distill.records import Mesh
from generation.procedural.primitives import (
    MeshBuilder,
    box_mesh,
    circle_ring,
    cylinder_mesh,
    placed,
    revolve_profile,
    rot_matrix,
    tube_mesh,
)


def build_chair(rng: np.random.Generator) -> tuple[Mesh, dict[str, Any]]:
    back, seat, leg, armrest = range(4)
    b = MeshBuilder()
    w, d = rng.uniform(0.8, 1.2), rng.uniform(0.75, 1.1)
    t, h = rng.uniform(0.06, 0.14), rng.uniform(0.75, 1.05)  # seat thickness, seat top height
    pedestal = rng.random() < 0.35
    round_seat = pedestal and rng.random() < 0.5
    if round_seat:
        w = d = max(w, d)
        b.add(placed(cylinder_mesh(w / 2, w / 2, t), at=(0, h - t, 0)), seat)
    else:
        b.add(placed(box_mesh((w, t, d)), at=(0, h - t / 2, 0)), seat)
    under = h - t  # seat bottom
    lt = rng.uniform(0.05, 0.1)
    if pedestal:
        n_legs = int(rng.integers(3, 7))
        col_r = rng.uniform(0.04, 0.07)
        foot_y = rng.uniform(0.06, 0.12)
        b.add(placed(cylinder_mesh(col_r, col_r, under - foot_y), at=(0, foot_y, 0)), leg)
        spoke = rng.uniform(0.35, 0.5) * max(w, d)
        for i in range(n_legs):
            ang = 360.0 * i / n_legs + 90.0
            box = box_mesh((spoke, lt, lt * 1.2))
            b.add(placed(box, rot_matrix("y", ang), at=rot_matrix("y", ang) @ [spoke / 2, foot_y, 0]), leg)
            tip = rot_matrix("y", ang) @ [spoke - lt / 2, 0, 0]
            b.add(placed(cylinder_mesh(lt * 0.6, lt * 0.6, foot_y), at=tip), leg)
    else:
        n_legs = 4
        inset = rng.uniform(0.0, 0.08)
        round_legs = rng.random() < 0.4
        for sx in (-1, 1):
            for sz in (-1, 1):
                x, z = sx * (w / 2 - inset - lt / 2), sz * (d / 2 - inset - lt / 2)
                prim = (
                    cylinder_mesh(lt / 2, lt / 2, under)
                    if round_legs
                    else placed(box_mesh((lt, under, lt)), at=(0, under / 2, 0))
                )
                b.add(placed(prim, at=(x, 0, z)), leg)
        if rng.random() < 0.3:  # side stretchers between front and back legs
            y = rng.uniform(0.15, 0.35) * under
            for sx in (-1, 1):
                x = sx * (w / 2 - inset - lt / 2)
                b.add(placed(box_mesh((lt * 0.6, lt * 0.6, d - 2 * inset)), at=(x, y, 0)), leg)
    # Back: stands on the rear edge of the seat, tilted backwards about its bottom edge.
    bw, bh, bt = w * rng.uniform(0.85, 1.0), rng.uniform(0.7, 1.2), rng.uniform(0.05, 0.1)
    tilt = rng.uniform(0.0, 15.0)
    slats = 0 if rng.random() < 0.6 else int(rng.integers(3, 6))
    pivot = np.array([0.0, h, -d / 2 + bt / 2])
    tilt_rot = rot_matrix("x", -tilt)
    parts: list[tuple[tuple, tuple[float, float, float]]] = []
    if slats == 0:
        parts.append((box_mesh((bw, bh, bt)), (0, bh / 2, 0)))
    else:
        post, rail = bt * 1.2, rng.uniform(0.12, 0.2) * bh
        for sx in (-1, 1):
            parts.append((box_mesh((post, bh, bt)), (sx * (bw - post) / 2, bh / 2, 0)))
        parts.append((box_mesh((bw - 2 * post, rail, bt)), (0, bh - rail / 2, 0)))
        gap = (bw - 2 * post) / slats
        for i in range(slats):
            x = -bw / 2 + post + gap * (i + 0.5)
            parts.append((box_mesh((gap * 0.5, bh - rail, bt * 0.7)), (x, (bh - rail) / 2, 0)))
    for prim, at in parts:
        v, f = placed(prim, at=at)
        b.add((v @ tilt_rot.T + pivot, f), back)
    arms = rng.random() < 0.45
    if arms:
        ah, aw, at_ = rng.uniform(0.2, 0.32), rng.uniform(0.07, 0.11), rng.uniform(0.04, 0.07)
        al = d * rng.uniform(0.7, 0.95)
        for sx in (-1, 1):
            x = sx * (w / 2 - aw / 2)
            zc = d / 2 - al / 2
            b.add(placed(box_mesh((aw, at_, al)), at=(x, h + ah, zc)), armrest)
            # The support stands on the seat: at the front corner, or mid-side on a round seat.
            support_z = 0.0 if round_seat else d / 2 - aw
            b.add(placed(box_mesh((aw * 0.8, ah, aw * 0.8)), at=(x, h + ah / 2, support_z)), armrest)
    params = {"width": w, "depth": d, "seat_height": h, "legs": n_legs, "pedestal": pedestal, "back_height": bh}
    params |= {"back_tilt_deg": tilt, "slats": slats, "arms": arms}
    return b.mesh(), params


def build_table(rng: np.random.Generator) -> tuple[Mesh, dict[str, Any]]:
    top, leg, drawer = range(3)
    b = MeshBuilder()
    h, t = rng.uniform(0.7, 1.0), rng.uniform(0.05, 0.12)
    under = h - t
    round_top = rng.random() < 0.3
    drawers = 0
    if round_top:
        r = rng.uniform(0.6, 0.9)
        b.add(placed(cylinder_mesh(r, r, t), at=(0, under, 0)), top)
        if rng.random() < 0.5:  # pedestal column and a foot disc
            cr = rng.uniform(0.05, 0.1)
            fr, ft = r * rng.uniform(0.45, 0.65), rng.uniform(0.03, 0.06)
            b.add(cylinder_mesh(fr, fr * 0.8, ft), leg)
            b.add(placed(cylinder_mesh(cr, cr, under - ft), at=(0, ft, 0)), leg)
            n_legs = 1
        else:
            n_legs = int(rng.integers(3, 6))
            lt = rng.uniform(0.05, 0.09)
            for i in range(n_legs):
                p = rot_matrix("y", 360.0 * i / n_legs) @ [r * 0.7, 0, 0]
                b.add(placed(cylinder_mesh(lt / 2 * 0.7, lt / 2, under), at=p), leg)
        params: dict[str, Any] = {"round": True, "radius": r}
    else:
        w, d = rng.uniform(1.4, 2.4), rng.uniform(0.8, 1.3)
        b.add(placed(box_mesh((w, t, d)), at=(0, h - t / 2, 0)), top)
        lt, inset = rng.uniform(0.06, 0.12), rng.uniform(0.02, 0.12)
        trestle = rng.random() < 0.15
        if trestle:  # two panel legs at the ends
            n_legs = 2
            for sx in (-1, 1):
                b.add(placed(box_mesh((lt, under, d * 0.8)), at=(sx * (w / 2 - inset - lt / 2), under / 2, 0)), leg)
        else:
            n_legs = 4
            tapered = rng.random() < 0.4
            for sx in (-1, 1):
                for sz in (-1, 1):
                    x, z = sx * (w / 2 - inset - lt / 2), sz * (d / 2 - inset - lt / 2)
                    if tapered:
                        prim = cylinder_mesh(lt * 0.3, lt / 2, under)
                    else:
                        prim = placed(box_mesh((lt, under, lt)), at=(0, under / 2, 0))
                    b.add(placed(prim, at=(x, 0, z)), leg)
        if rng.random() < 0.65:
            drawers = int(rng.integers(1, 3))
            span = w - 2 * (inset + lt) - 0.04
            dw = span / drawers
            dh, dd = rng.uniform(0.12, 0.2), d * rng.uniform(0.6, 0.9)
            for i in range(drawers):
                x = -span / 2 + dw * (i + 0.5)
                b.add(placed(box_mesh((dw * 0.92, dh, dd)), at=(x, under - dh / 2, d / 2 - inset - dd / 2)), drawer)
                knob = placed(box_mesh((0.06, 0.04, 0.04)), at=(x, under - dh / 2, d / 2 - inset + 0.02))
                b.add(knob, drawer)
        params = {"round": False, "width": w, "depth": d, "trestle": trestle}
    params |= {"height": h, "legs": n_legs, "drawers": drawers}
    return b.mesh(), params


def build_lamp(rng: np.random.Generator) -> tuple[Mesh, dict[str, Any]]:
    base, shade, canopy, tube = range(4)
    b = MeshBuilder()

    def add_shade(center: np.ndarray, rot: np.ndarray | None = None, scale: float = 1.0) -> None:
        rb = rng.uniform(0.25, 0.45) * scale
        sh = rng.uniform(0.25, 0.5) * scale
        if rng.random() < 0.3:  # dome
            v, f = revolve_profile(
                [(0.0, 0.0), (rb, 0.0)] + [(rb * np.cos(a), sh * np.sin(a)) for a in np.linspace(0, np.pi / 2, 6)[1:]]
            )
        else:
            v, f = cylinder_mesh(rb, rb * rng.uniform(0.4, 0.9), sh)
        v = v - [0, sh * 0.5, 0]
        if rot is not None:
            v = v @ rot.T
        b.add((v + center, f), shade)

    pendant = rng.random() < 0.4
    if pendant:
        top = rng.uniform(1.4, 2.0)
        arms = 1 if rng.random() < 0.75 else 3
        # A chandelier's canopy is wider and its shades smaller, so no part drowns the others.
        cr, ch = rng.uniform(0.1, 0.2) * (1.6 if arms == 3 else 1.0), rng.uniform(0.04, 0.1)
        b.add(placed(cylinder_mesh(cr * 0.8, cr, ch), at=(0, top - ch, 0)), canopy)
        length, tr = rng.uniform(0.6, 1.1), rng.uniform(0.025, 0.035)
        b.add(placed(cylinder_mesh(tr, tr, length), at=(0, top - ch - length, 0)), tube)
        if arms == 1:
            add_shade(np.array([0.0, top - ch - length - 0.1, 0.0]))
        else:
            y0 = top - ch - length
            reach = rng.uniform(0.4, 0.6)
            for i in range(3):
                direction = rot_matrix("y", 120.0 * i) @ np.array([1.0, 0.0, 0.0])
                end = direction * reach + [0, y0 - 0.05, 0]
                path = np.array(
                    [[0, y0 + 0.02, 0], direction * reach * 0.5 + [0, y0 - 0.05, 0], end, end - [0, 0.15, 0]]
                )
                b.add(tube_mesh(path, circle_ring(tr, 10)), tube)
                add_shade(end - [0, 0.2, 0], scale=0.65)
        params: dict[str, Any] = {"pendant": True, "arms": arms, "cord": length}
    else:
        br, bh = rng.uniform(0.25, 0.45), rng.uniform(0.04, 0.12)
        if rng.random() < 0.3:
            b.add(placed(box_mesh((2 * br, bh, 2 * br)), at=(0, bh / 2, 0)), base)
        else:
            b.add(cylinder_mesh(br, br * rng.uniform(0.6, 1.0), bh), base)
        height, tr = rng.uniform(0.8, 1.8), rng.uniform(0.025, 0.045)
        desk = rng.random() < 0.35
        if desk:  # a vertical post and an arm leaning forward, the shade tilted down
            post = height * 0.55
            ang = rng.uniform(30, 70)
            arm = height * 0.5
            elbow = np.array([0, bh + post, 0])
            end = elbow + arm * np.array([0, np.cos(np.radians(ang)), np.sin(np.radians(ang))])
            b.add(tube_mesh(np.array([[0, bh, 0], elbow - [0, 0.01, 0], elbow]), circle_ring(tr, 12)), tube)
            b.add(tube_mesh(np.array([elbow, (elbow + end) / 2, end]), circle_ring(tr, 12)), tube)
            add_shade(end + [0, -0.08, 0.08], rot_matrix("x", -35))  # opening faces down and forward
        else:
            b.add(placed(cylinder_mesh(tr, tr, height), at=(0, bh, 0)), tube)
            add_shade(np.array([0.0, bh + height, 0.0]))
        params = {"pendant": False, "height": height, "desk": desk}
    return b.mesh(), params
