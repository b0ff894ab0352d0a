"""The embedded default corpus: part-labelled shapes built from primitives.

Each category assembles closed triangle primitives (boxes, prisms, surfaces of revolution,
tubes) into a plausible object with per-face part labels, then goes through
``distill.sampling.shape_from_mesh`` like any real mesh. Proportions, part counts and part
styles vary per instance from a generator seeded by ``(seed, category, index)``, so one
shape is reproducible on its own, whichever worker builds it.

Frame: +y up, the object's front towards +z (the camera at azimuth 0 sees the front).
Categories and part names (in label order) are ShapeNetPart's, so a student distilled on
this corpus can be evaluated on ShapeNetPart as is.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from distill.categories import SHAPENETPART_PARTS, canonical_name
from distill.records import Mesh, Shape
from distill.sampling import derive_seed, shape_from_mesh

CATEGORIES = ("Airplane", "Car", "Chair", "Guitar", "Lamp", "Rocket", "Skateboard", "Table")
PROCEDURAL_PARTS: dict[str, list[str]] = {c: list(SHAPENETPART_PARTS[c]) for c in CATEGORIES}
"""Part names in label order of every procedural category (ShapeNetPart's)."""

_SECTIONS = 20  # segments around a surface of revolution: smooth enough at 800², few faces.


# --------------------------------------------------------------------------------------
# Primitives: each returns (vertices (V, 3) float64, faces (F, 3) int64), closed and
# consistently wound; ``_Builder.add`` turns every one outward.


def _rot(axis: str, deg: float) -> np.ndarray:
    """3×3 rotation by ``deg`` degrees about the x, y or z axis (right-hand rule)."""
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return {
        "x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
        "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
        "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]),
    }[axis]


def _loft(rings: list[np.ndarray], cap_start: bool = True, cap_end: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Join consecutive rings of k points (or single-point poles) into a tube.

    rings: list of (k, 3) arrays or (1, 3) poles, same k for all non-poles. Open ends of
    ring type are closed by a fan around the ring's centroid.
    """
    verts: list[np.ndarray] = []
    starts: list[int] = []
    n = 0
    for r in rings:
        starts.append(n)
        verts.append(r)
        n += len(r)
    k = max(len(r) for r in rings)
    j = np.arange(k)
    j1 = (j + 1) % k
    faces: list[np.ndarray] = []
    for i in range(len(rings) - 1):
        a, b = rings[i], rings[i + 1]
        sa, sb = starts[i], starts[i + 1]
        if len(a) > 1 and len(b) > 1:
            faces.append(np.stack([sa + j, sa + j1, sb + j1], 1))
            faces.append(np.stack([sa + j, sb + j1, sb + j], 1))
        elif len(a) > 1:  # ring → pole
            faces.append(np.stack([sa + j, sa + j1, np.full(k, sb)], 1))
        elif len(b) > 1:  # pole → ring
            faces.append(np.stack([np.full(k, sa), sb + j1, sb + j], 1))
    if cap_start and len(rings[0]) > 1:
        verts.append(rings[0].mean(0, keepdims=True))
        faces.append(np.stack([np.full(k, n), starts[0] + j1, starts[0] + j], 1))
        n += 1
    if cap_end and len(rings[-1]) > 1:
        verts.append(rings[-1].mean(0, keepdims=True))
        faces.append(np.stack([np.full(k, n), starts[-1] + j, starts[-1] + j1], 1))
    return np.concatenate(verts), np.concatenate(faces).astype(np.int64)


def _circle(radius: float, sections: int = _SECTIONS) -> np.ndarray:
    """(sections, 2) points of a circle, counter-clockwise."""
    t = np.linspace(0.0, 2.0 * np.pi, sections, endpoint=False)
    return radius * np.stack([np.cos(t), np.sin(t)], 1)


def _revolve(profile: list[tuple[float, float]], sections: int = _SECTIONS) -> tuple[np.ndarray, np.ndarray]:
    """Surface of revolution about +y. profile: (radius, y) pairs; radius 0 = a pole."""
    rings = []
    for r, y in profile:
        if r <= 1e-9:  # a pole (also catches cos(pi/2) rounding)
            rings.append(np.array([[0.0, y, 0.0]]))
        else:
            c = _circle(r, sections)
            rings.append(np.stack([c[:, 0], np.full(sections, y), c[:, 1]], 1))
    return _loft(rings)


def _cylinder(r_bottom: float, r_top: float, height: float, sections: int = _SECTIONS) -> tuple:
    """Frustum (cylinder when radii agree, cone when r_top = 0) along +y from y=0 to y=height."""
    return _revolve([(0.0, 0.0), (r_bottom, 0.0), (r_top, height), (0.0, height)], sections)


def _ellipsoid(rx: float, ry: float, rz: float, rings: int = 8, sections: int = _SECTIONS) -> tuple:
    """Ellipsoid centred at the origin with semi-axes (rx, ry, rz)."""
    t = np.linspace(0.0, np.pi, rings + 1)
    v, f = _revolve([(float(np.sin(a)), float(-np.cos(a))) for a in t], sections)
    return v * [rx, ry, rz], f


def _box(size: tuple[float, float, float]) -> tuple:
    """Axis-aligned box of ``size`` centred at the origin."""
    sx, sy, sz = (s / 2.0 for s in size)
    rect = np.array([[sx, sz], [-sx, sz], [-sx, -sz], [sx, -sz]])
    return _loft([np.stack([rect[:, 0], np.full(4, y), rect[:, 1]], 1) for y in (-sy, sy)])


def _prism(polygon: np.ndarray, thickness: float) -> tuple:
    """A convex polygon in the xz plane, (k, 2) as (x, z), extruded along y, centred on y=0."""
    p = np.asarray(polygon, np.float64)
    k = len(p)
    return _loft([np.stack([p[:, 0], np.full(k, y), p[:, 1]], 1) for y in (-thickness / 2, thickness / 2)])


def _tube(path: np.ndarray, profile: np.ndarray) -> tuple:
    """Sweep a 2D cross-section (m, 2) along a 3D polyline path (P, 3), capped at both ends.

    The section's first axis follows a fixed reference direction projected off the
    tangent, so a planar path gives an untwisted tube.
    """
    path = np.asarray(path, np.float64)
    tangents = np.gradient(path, axis=0)
    tangents /= np.linalg.norm(tangents, axis=1, keepdims=True)
    ref = np.array([0.0, 0.0, 1.0]) if abs(tangents[:, 2]).max() < 0.9 else np.array([1.0, 0.0, 0.0])
    rings = []
    for p, t in zip(path, tangents):
        u = ref - t * (ref @ t)
        u /= np.linalg.norm(u)
        w = np.cross(t, u)
        rings.append(p + profile[:, :1] * u + profile[:, 1:] * w)
    return _loft(rings)


def _place(prim: tuple, rot: np.ndarray | None = None, at: tuple[float, float, float] = (0, 0, 0)) -> tuple:
    v, f = prim
    if rot is not None:
        v = v @ np.asarray(rot).T
    return v + np.asarray(at, np.float64), f


def _mirror_x(prim: tuple) -> tuple:
    v, f = prim
    return v * [-1.0, 1.0, 1.0], f


class _Builder:
    """Accumulates primitives with part labels into one labelled mesh."""

    def __init__(self) -> None:
        self.vertices: list[np.ndarray] = []
        self.faces: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.n = 0

    def add(self, prim: tuple, label: int) -> None:
        v, f = prim
        tri = v[f]
        # Signed volume < 0 means the faces point inward (e.g. after a mirror): flip them.
        if np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() < 0:
            f = f[:, ::-1]
        self.vertices.append(v)
        self.faces.append(f + self.n)
        self.labels.append(np.full(len(f), label, np.int32))
        self.n += len(v)

    def mesh(self) -> Mesh:
        return Mesh(
            np.concatenate(self.vertices).astype(np.float32),
            np.concatenate(self.faces).astype(np.int32),
            np.concatenate(self.labels),
        )


# --------------------------------------------------------------------------------------
# Categories. Each builder takes a Generator and returns (mesh, params for meta).


def _chair(rng: np.random.Generator) -> tuple[Mesh, dict[str, Any]]:
    back, seat, leg, armrest = range(4)
    b = _Builder()
    w, d = rng.uniform(0.8, 1.2), rng.uniform(0.75, 1.1)
    t, h = rng.uniform(0.06, 0.14), rng.uniform(0.75, 1.05)  # seat thickness, seat top height
    pedestal = rng.random() < 0.35
    round_seat = pedestal and rng.random() < 0.5
    if round_seat:
        w = d = max(w, d)
        b.add(_place(_cylinder(w / 2, w / 2, t), at=(0, h - t, 0)), seat)
    else:
        b.add(_place(_box((w, t, d)), at=(0, h - t / 2, 0)), seat)
    under = h - t  # seat bottom
    lt = rng.uniform(0.05, 0.1)
    if pedestal:
        n_legs = int(rng.integers(3, 7))
        col_r = rng.uniform(0.04, 0.07)
        foot_y = rng.uniform(0.06, 0.12)
        b.add(_place(_cylinder(col_r, col_r, under - foot_y), at=(0, foot_y, 0)), leg)
        spoke = rng.uniform(0.35, 0.5) * max(w, d)
        for i in range(n_legs):
            ang = 360.0 * i / n_legs + 90.0
            box = _box((spoke, lt, lt * 1.2))
            b.add(_place(box, _rot("y", ang), at=_rot("y", ang) @ [spoke / 2, foot_y, 0]), leg)
            tip = _rot("y", ang) @ [spoke - lt / 2, 0, 0]
            b.add(_place(_cylinder(lt * 0.6, lt * 0.6, foot_y), at=tip), leg)
    else:
        n_legs = 4
        inset = rng.uniform(0.0, 0.08)
        round_legs = rng.random() < 0.4
        for sx in (-1, 1):
            for sz in (-1, 1):
                x, z = sx * (w / 2 - inset - lt / 2), sz * (d / 2 - inset - lt / 2)
                prim = (
                    _cylinder(lt / 2, lt / 2, under)
                    if round_legs
                    else _place(_box((lt, under, lt)), at=(0, under / 2, 0))
                )
                b.add(_place(prim, at=(x, 0, z)), leg)
        if rng.random() < 0.3:  # side stretchers between front and back legs
            y = rng.uniform(0.15, 0.35) * under
            for sx in (-1, 1):
                x = sx * (w / 2 - inset - lt / 2)
                b.add(_place(_box((lt * 0.6, lt * 0.6, d - 2 * inset)), at=(x, y, 0)), leg)
    # Back: stands on the rear edge of the seat, tilted backwards about its bottom edge.
    bw, bh, bt = w * rng.uniform(0.85, 1.0), rng.uniform(0.7, 1.2), rng.uniform(0.05, 0.1)
    tilt = rng.uniform(0.0, 15.0)
    slats = 0 if rng.random() < 0.6 else int(rng.integers(3, 6))
    pivot = np.array([0.0, h, -d / 2 + bt / 2])
    tilt_rot = _rot("x", -tilt)
    parts: list[tuple[tuple, tuple[float, float, float]]] = []
    if slats == 0:
        parts.append((_box((bw, bh, bt)), (0, bh / 2, 0)))
    else:
        post, rail = bt * 1.2, rng.uniform(0.12, 0.2) * bh
        for sx in (-1, 1):
            parts.append((_box((post, bh, bt)), (sx * (bw - post) / 2, bh / 2, 0)))
        parts.append((_box((bw - 2 * post, rail, bt)), (0, bh - rail / 2, 0)))
        gap = (bw - 2 * post) / slats
        for i in range(slats):
            x = -bw / 2 + post + gap * (i + 0.5)
            parts.append((_box((gap * 0.5, bh - rail, bt * 0.7)), (x, (bh - rail) / 2, 0)))
    for prim, at in parts:
        v, f = _place(prim, at=at)
        b.add((v @ tilt_rot.T + pivot, f), back)
    arms = rng.random() < 0.45
    if arms:
        ah, aw, at_ = rng.uniform(0.2, 0.32), rng.uniform(0.07, 0.11), rng.uniform(0.04, 0.07)
        al = d * rng.uniform(0.7, 0.95)
        for sx in (-1, 1):
            x = sx * (w / 2 - aw / 2)
            zc = d / 2 - al / 2
            b.add(_place(_box((aw, at_, al)), at=(x, h + ah, zc)), armrest)
            # The support stands on the seat: at the front corner, or mid-side on a round seat.
            support_z = 0.0 if round_seat else d / 2 - aw
            b.add(_place(_box((aw * 0.8, ah, aw * 0.8)), at=(x, h + ah / 2, support_z)), armrest)
    params = {"width": w, "depth": d, "seat_height": h, "legs": n_legs, "pedestal": pedestal, "back_height": bh}
    params |= {"back_tilt_deg": tilt, "slats": slats, "arms": arms}
    return b.mesh(), params


def _table(rng: np.random.Generator) -> tuple[Mesh, dict[str, Any]]:
    top, leg, drawer = range(3)
    b = _Builder()
    h, t = rng.uniform(0.7, 1.0), rng.uniform(0.05, 0.12)
    under = h - t
    round_top = rng.random() < 0.3
    drawers = 0
    if round_top:
        r = rng.uniform(0.6, 0.9)
        b.add(_place(_cylinder(r, r, t), at=(0, under, 0)), top)
        if rng.random() < 0.5:  # pedestal column and a foot disc
            cr = rng.uniform(0.05, 0.1)
            fr, ft = r * rng.uniform(0.45, 0.65), rng.uniform(0.03, 0.06)
            b.add(_cylinder(fr, fr * 0.8, ft), leg)
            b.add(_place(_cylinder(cr, cr, under - ft), at=(0, ft, 0)), leg)
            n_legs = 1
        else:
            n_legs = int(rng.integers(3, 6))
            lt = rng.uniform(0.05, 0.09)
            for i in range(n_legs):
                p = _rot("y", 360.0 * i / n_legs) @ [r * 0.7, 0, 0]
                b.add(_place(_cylinder(lt / 2 * 0.7, lt / 2, under), at=p), leg)
        params: dict[str, Any] = {"round": True, "radius": r}
    else:
        w, d = rng.uniform(1.4, 2.4), rng.uniform(0.8, 1.3)
        b.add(_place(_box((w, t, d)), at=(0, h - t / 2, 0)), top)
        lt, inset = rng.uniform(0.06, 0.12), rng.uniform(0.02, 0.12)
        trestle = rng.random() < 0.15
        if trestle:  # two panel legs at the ends
            n_legs = 2
            for sx in (-1, 1):
                b.add(_place(_box((lt, under, d * 0.8)), at=(sx * (w / 2 - inset - lt / 2), under / 2, 0)), leg)
        else:
            n_legs = 4
            tapered = rng.random() < 0.4
            for sx in (-1, 1):
                for sz in (-1, 1):
                    x, z = sx * (w / 2 - inset - lt / 2), sz * (d / 2 - inset - lt / 2)
                    if tapered:
                        prim = _cylinder(lt * 0.3, lt / 2, under)
                    else:
                        prim = _place(_box((lt, under, lt)), at=(0, under / 2, 0))
                    b.add(_place(prim, at=(x, 0, z)), leg)
        if rng.random() < 0.65:
            drawers = int(rng.integers(1, 3))
            span = w - 2 * (inset + lt) - 0.04
            dw = span / drawers
            dh, dd = rng.uniform(0.12, 0.2), d * rng.uniform(0.6, 0.9)
            for i in range(drawers):
                x = -span / 2 + dw * (i + 0.5)
                b.add(_place(_box((dw * 0.92, dh, dd)), at=(x, under - dh / 2, d / 2 - inset - dd / 2)), drawer)
                knob = _place(_box((0.06, 0.04, 0.04)), at=(x, under - dh / 2, d / 2 - inset + 0.02))
                b.add(knob, drawer)
        params = {"round": False, "width": w, "depth": d, "trestle": trestle}
    params |= {"height": h, "legs": n_legs, "drawers": drawers}
    return b.mesh(), params


def _wing(root: float, tip: float, span: float, sweep: float, thick: float) -> tuple:
    """A trapezoid slab in the xz plane: root chord along z at x=0, tip at x=span."""
    poly = np.array([[0.0, 0.0], [span, -sweep], [span, -sweep - tip], [0.0, -root]])
    return _prism(poly, thick)


def _airplane(rng: np.random.Generator) -> tuple[Mesh, dict[str, Any]]:
    body, wing, tail, engine = range(4)
    b = _Builder()
    length, r = rng.uniform(3.0, 4.5), rng.uniform(0.16, 0.28)
    nose = r * rng.uniform(1.5, 3.0)
    tail_len = length * rng.uniform(0.2, 0.3)
    # Fuselage along z (nose at +z): ellipsoidal nose, cylinder, tail cone swept upwards.
    # (z, radius, centre height) from the nose tip backwards.
    stations = [(length / 2 - nose + nose * np.cos(a), r * np.sin(a), 0.0) for a in np.linspace(0, np.pi / 2, 6)[1:]]
    stations.append((-length / 2 + tail_len, r, 0.0))
    for s in np.linspace(0, 1, 5)[1:]:
        stations.append((-length / 2 + tail_len * (1 - s), r * (1 - 0.75 * s), r * 0.6 * s))
    circle = _circle(1.0, _SECTIONS)
    rings = [np.array([[0.0, 0.0, length / 2]])]
    for z, rr, yc in stations:
        rings.append(np.stack([rr * circle[:, 0], yc + rr * circle[:, 1], np.full(len(circle), z)], 1))
    b.add(_loft(rings), body)
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
        prim = _place(_wing(root, tip, span, sweep, thick), _rot("z", dihedral), at=(r * 0.7, wy, wz))
        b.add(_mirror_x(prim) if mirror else prim, wing)
    # Tail: horizontal stabilisers and a vertical fin (T-tail puts the stabilisers on top).
    fin_h = rng.uniform(0.5, 0.9)
    fin_root, fin_sweep = rng.uniform(0.5, 0.8), rng.uniform(0.2, 0.5)
    tail_z = -length / 2 + fin_root + 0.05
    fin_poly = np.array([[0.0, 0.0], [fin_h, -fin_sweep], [fin_h, -fin_sweep - fin_root * 0.5], [0.0, -fin_root]])
    # Slab in the yz plane: build in xz (x = height), then rotate x → y.
    fin = _place(_prism(fin_poly, thick), _rot("z", 90), at=(0, r * 0.5, tail_z))
    b.add(fin, tail)
    t_tail = rng.random() < 0.2
    st_span, st_root = rng.uniform(0.5, 0.9), rng.uniform(0.3, 0.5)
    st_y = r * 0.5 + fin_h * 0.95 if t_tail else r * 0.5
    st_z = tail_z - fin_sweep if t_tail else tail_z
    for mirror in (False, True):
        prim = _place(_wing(st_root, st_root * 0.5, st_span, st_root * 0.5, thick * 0.8), at=(0.02, st_y, st_z))
        b.add(_mirror_x(prim) if mirror else prim, tail)
    # Engines: nacelles under the wings (2 or 4), or 2 on the rear fuselage.
    rear = rng.random() < 0.15
    n_eng = 2 if rear or rng.random() < 0.65 else 4
    nr, nl = rng.uniform(0.1, 0.16), rng.uniform(0.5, 0.8)
    nacelle = _place(_cylinder(nr * 0.9, nr, nl), _rot("x", 90))  # along +z from z=0
    positions = []
    if rear:
        for sx in (-1, 1):
            positions.append(((sx * (r + nr + 0.05), r * 0.5, -length / 2 + tail_len + 0.1 + nl), None))
            # A horizontal pylon from the fuselage side to the nacelle.
            pz = -length / 2 + tail_len + 0.1 + nl * 0.5
            b.add(_place(_box((nr + 0.1, 0.04, nl * 0.5)), at=(sx * (r + (nr + 0.05) / 2 - 0.05), r * 0.5, pz)), engine)
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
            b.add(_place(_box((0.03, 0.08, root * 0.5)), at=(pylon[0], pylon[1] + 0.03, z - nl * 0.5)), engine)
    params = {"length": length, "radius": r, "span": span, "sweep": sweep, "engines": n_eng, "rear_engines": rear}
    params |= {"t_tail": t_tail}
    return b.mesh(), params


def _lamp(rng: np.random.Generator) -> tuple[Mesh, dict[str, Any]]:
    base, shade, canopy, tube = range(4)
    b = _Builder()

    def add_shade(center: np.ndarray, rot: np.ndarray | None = None, scale: float = 1.0) -> None:
        rb = rng.uniform(0.25, 0.45) * scale
        sh = rng.uniform(0.25, 0.5) * scale
        if rng.random() < 0.3:  # dome
            v, f = _revolve(
                [(0.0, 0.0), (rb, 0.0)] + [(rb * np.cos(a), sh * np.sin(a)) for a in np.linspace(0, np.pi / 2, 6)[1:]]
            )
        else:
            v, f = _cylinder(rb, rb * rng.uniform(0.4, 0.9), sh)
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
        b.add(_place(_cylinder(cr * 0.8, cr, ch), at=(0, top - ch, 0)), canopy)
        length, tr = rng.uniform(0.6, 1.1), rng.uniform(0.025, 0.035)
        b.add(_place(_cylinder(tr, tr, length), at=(0, top - ch - length, 0)), tube)
        if arms == 1:
            add_shade(np.array([0.0, top - ch - length - 0.1, 0.0]))
        else:
            y0 = top - ch - length
            reach = rng.uniform(0.4, 0.6)
            for i in range(3):
                direction = _rot("y", 120.0 * i) @ np.array([1.0, 0.0, 0.0])
                end = direction * reach + [0, y0 - 0.05, 0]
                path = np.array(
                    [[0, y0 + 0.02, 0], direction * reach * 0.5 + [0, y0 - 0.05, 0], end, end - [0, 0.15, 0]]
                )
                b.add(_tube(path, _circle(tr, 10)), tube)
                add_shade(end - [0, 0.2, 0], scale=0.65)
        params: dict[str, Any] = {"pendant": True, "arms": arms, "cord": length}
    else:
        br, bh = rng.uniform(0.25, 0.45), rng.uniform(0.04, 0.12)
        if rng.random() < 0.3:
            b.add(_place(_box((2 * br, bh, 2 * br)), at=(0, bh / 2, 0)), base)
        else:
            b.add(_cylinder(br, br * rng.uniform(0.6, 1.0), bh), base)
        height, tr = rng.uniform(0.8, 1.8), rng.uniform(0.025, 0.045)
        desk = rng.random() < 0.35
        if desk:  # a vertical post and an arm leaning forward, the shade tilted down
            post = height * 0.55
            ang = rng.uniform(30, 70)
            arm = height * 0.5
            elbow = np.array([0, bh + post, 0])
            end = elbow + arm * np.array([0, np.cos(np.radians(ang)), np.sin(np.radians(ang))])
            b.add(_tube(np.array([[0, bh, 0], elbow - [0, 0.01, 0], elbow]), _circle(tr, 12)), tube)
            b.add(_tube(np.array([elbow, (elbow + end) / 2, end]), _circle(tr, 12)), tube)
            add_shade(end + [0, -0.08, 0.08], _rot("x", -35))  # opening faces down and forward
        else:
            b.add(_place(_cylinder(tr, tr, height), at=(0, bh, 0)), tube)
            add_shade(np.array([0.0, bh + height, 0.0]))
        params = {"pendant": False, "height": height, "desk": desk}
    return b.mesh(), params


def _rocket(rng: np.random.Generator) -> tuple[Mesh, dict[str, Any]]:
    body, fin, nose = range(3)
    b = _Builder()
    r, length = rng.uniform(0.15, 0.3), rng.uniform(1.8, 3.2)
    staged = rng.random() < 0.3
    if staged:  # a wider lower stage, a conical adapter, a narrower upper stage
        r2 = r * rng.uniform(0.65, 0.85)
        low = length * rng.uniform(0.4, 0.6)
        b.add(_revolve([(0, 0), (r, 0), (r, low), (r2, low + r * 0.6), (r2, length), (0, length)]), body)
        r_top = r2
    else:
        b.add(_cylinder(r, r, length), body)
        r_top = r
    if rng.random() < 0.5:  # engine bell
        b.add(_place(_cylinder(r * 0.7, r * 0.4, r * 0.5), _rot("x", 180)), body)
    boosters = int(rng.choice([0, 0, 2, 4]))
    for i in range(boosters):
        br = r * 0.35
        p = _rot("y", 360.0 * i / boosters + 45) @ [r + br, 0, 0]
        b.add(_place(_revolve([(0, 0), (br, 0), (br, length * 0.45), (0, length * 0.45 + br * 2.5)]), at=p), body)
    nh = r_top * rng.uniform(2.5, 4.5)
    k = rng.uniform(0.5, 1.0)  # 1: straight cone; < 1: ogive
    b.add(
        _revolve(
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
        v, f = _prism(poly[:, [0, 1]], thick)  # xz plane, extruded along y
        v = v @ _rot("x", -90).T  # z → y (height), y → thickness along −z
        v = v + [r * 0.95, -0.05, 0]
        b.add((v @ _rot("y", ang).T, f), fin)
    params = {"radius": r, "length": length, "staged": staged, "boosters": boosters, "fins": n_fins, "nose": nh}
    return b.mesh(), params


def _guitar(rng: np.random.Generator) -> tuple[Mesh, dict[str, Any]]:
    head, neck, body = range(3)
    b = _Builder()
    electric = rng.random() < 0.4
    thick = rng.uniform(0.1, 0.15) if electric else rng.uniform(0.22, 0.35)
    lower_w, lower_h = rng.uniform(0.45, 0.6), rng.uniform(0.45, 0.6)
    ratio = rng.uniform(0.7, 0.85)
    upper_w, upper_h = lower_w * ratio, lower_h * ratio
    upper_y = lower_h * rng.uniform(0.9, 1.15)
    slab = _place(_cylinder(1.0, 1.0, thick, 28), _rot("x", 90), at=(0, 0, -thick / 2))  # disc facing +z
    for sx, sy, cy in ((lower_w, lower_h, 0.0), (upper_w, upper_h, upper_y)):
        v, f = slab
        b.add((v * [sx, sy, 1.0] + [0, cy, 0], f), body)
    if electric and rng.random() < 0.7:  # a cutaway horn
        v, f = slab
        b.add((v * [upper_w * 0.35, upper_h * 0.6, 1.0] + [-upper_w * 0.8, upper_y + upper_h * 0.6, 0], f), body)
    nw, nl, nt = rng.uniform(0.1, 0.14), rng.uniform(1.2, 1.7), rng.uniform(0.05, 0.08)
    neck_y0 = upper_y + upper_h * 0.6
    b.add(_place(_box((nw, nl, nt)), at=(0, neck_y0 + nl / 2, thick / 2)), neck)
    hl, hw = rng.uniform(0.3, 0.45), nw * rng.uniform(1.3, 1.8)
    tilt = rng.uniform(0, 15)
    pivot = np.array([0, neck_y0 + nl, thick / 2])
    hv, hf = _place(_box((hw, hl, nt * 0.8)), at=(0, hl / 2, 0))
    b.add((hv @ _rot("x", -tilt).T + pivot, hf), head)
    pegs = 6
    for i in range(pegs):
        side = -1 if i < pegs // 2 else 1
        yy = hl * (0.2 + 0.6 * (i % (pegs // 2)) / max(pegs // 2 - 1, 1))
        pv, pf = _place(_cylinder(0.018, 0.018, 0.1, 10), _rot("z", -90 * side), at=(side * hw / 2, yy, 0))
        b.add((pv @ _rot("x", -tilt).T + pivot, pf), head)
    params = {
        "electric": electric,
        "thickness": thick,
        "lower_width": lower_w,
        "neck_length": nl,
        "head_tilt_deg": tilt,
    }
    return b.mesh(), params


def _skateboard(rng: np.random.Generator) -> tuple[Mesh, dict[str, Any]]:
    wheel, deck, belt = range(3)
    b = _Builder()
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
    b.add(_loft(rings), deck)
    wr, ww = rng.uniform(0.07, 0.1), rng.uniform(0.06, 0.09)
    truck_z = flat * rng.uniform(0.75, 0.95)
    track = width / 2 * rng.uniform(0.75, 0.95)
    axle_y = -wr - rng.uniform(0.06, 0.1)
    for sz in (-1, 1):
        z = sz * truck_z
        b.add(_place(_box((0.18, -axle_y, 0.12)), at=(0, axle_y / 2, z)), wheel)  # truck hanger
        b.add(_place(_cylinder(0.015, 0.015, 2 * track), _rot("z", 90), at=(track, axle_y, z)), wheel)  # axle
        for sx in (-1, 1):
            b.add(
                _place(_cylinder(wr, wr, ww), _rot("z", 90), at=(sx * track + (ww if sx > 0 else 0), axle_y, z)), wheel
            )
    straps = 0 if rng.random() < 0.5 else int(rng.integers(1, 3))
    sw, sh = rng.uniform(0.1, 0.16), rng.uniform(0.08, 0.14)
    for i in range(straps):
        z = (0.0 if straps == 1 else (-0.5 + i) * flat) + rng.uniform(-0.1, 0.1)
        a = np.linspace(0, np.pi, 12)
        path = np.stack([width * 0.42 * np.cos(a), thick + sh * np.sin(a), np.full_like(a, z)], 1)
        section = np.array([[-sw / 2, -0.012], [sw / 2, -0.012], [sw / 2, 0.012], [-sw / 2, 0.012]])
        b.add(_tube(path, section), belt)
    params = {"length": length, "width": width, "kick_deg": kick, "wheel_radius": wr, "straps": straps}
    return b.mesh(), params


def _car(rng: np.random.Generator) -> tuple[Mesh, dict[str, Any]]:
    roof, hood, wheel, body = range(4)
    b = _Builder()
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
    # _prism extrudes along y with the polygon as (x, z); map (z, y) → rotate afterwards.
    v, f = _prism(prof[:, [1, 0]], width)  # polygon axes: x ← y, z ← z; thickness along y
    v = v[:, [1, 0, 2]]  # swap: thickness → x, profile height → y
    b.add((v, f), body)
    # Cabin (windows and pillars, body) with the roof panel on top.
    hc = rng.uniform(0.4, 0.6)
    cab_len = length * rng.uniform(0.38, 0.5)
    cab_z = rng.uniform(-0.15, 0.05) * length
    front_slope, rear_slope = cab_len * rng.uniform(0.15, 0.3), cab_len * rng.uniform(0.08, 0.25)
    top0, top1 = cab_z - cab_len / 2 + rear_slope, cab_z + cab_len / 2 - front_slope
    cab = np.array([[cab_z + cab_len / 2, y1], [top1, y1 + hc], [top0, y1 + hc], [cab_z - cab_len / 2, y1]])
    v, f = _prism(cab[:, [1, 0]], width * 0.9)
    b.add((v[:, [1, 0, 2]], f), body)
    rt = 0.04
    b.add(_place(_box((width * 0.92, rt, (top1 - top0) * 1.06)), at=(0, y1 + hc + rt / 2, (top0 + top1) / 2)), roof)
    hood_front = length / 2 - fs * 0.5
    hood_back = cab_z + cab_len / 2
    b.add(
        _place(_box((width * 0.96, rt, hood_front - hood_back)), at=(0, y1 + rt / 2, (hood_front + hood_back) / 2)),
        hood,
    )
    axle = length / 2 - rng.uniform(0.6, 0.9)
    for sz in (-1, 1):
        for sx in (-1, 1):
            x = sx * (width / 2 - ww / 2 + 0.03)
            b.add(_place(_cylinder(wr, wr, ww, 24), _rot("z", 90), at=(x + ww / 2, wr, sz * axle)), wheel)
    params = {"length": length, "width": width, "wheel_radius": wr, "cabin_length": cab_len, "body_height": hb}
    return b.mesh(), params


_BUILDERS: dict[str, Callable[[np.random.Generator], tuple[Mesh, dict[str, Any]]]] = {
    "Airplane": _airplane,
    "Car": _car,
    "Chair": _chair,
    "Guitar": _guitar,
    "Lamp": _lamp,
    "Rocket": _rocket,
    "Skateboard": _skateboard,
    "Table": _table,
}


def instance_rng(seed: int, category: str, index: int) -> np.random.Generator:
    """The generator of one instance: a function of (seed, category, index) only."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, zlib.crc32(category.encode()), int(index)])


def make_mesh(category: str, index: int, seed: int) -> tuple[Mesh, dict[str, Any]]:
    """The labelled mesh of instance ``index`` of ``category`` (unnormalised, +y up) and its parameters."""
    name = canonical_name(category, list(_BUILDERS), "procedural category")
    if index < 0:
        raise ValueError(f"index={index} must be >= 0")
    mesh, params = _BUILDERS[name](instance_rng(seed, name, index))
    clean = {k: (round(float(v), 4) if isinstance(v, float | np.floating) else v) for k, v in params.items()}
    return mesh, {k: (int(v) if isinstance(v, np.integer) else v) for k, v in clean.items()}


def make_shape(category: str, index: int, seed: int, num_points: int = 2048) -> Shape:
    """Instance ``index`` of procedural ``category`` as a normalised, labelled ``Shape``.

    category: one of ``CATEGORIES`` (case-insensitive) → a Shape with ``num_points`` surface
    samples, per-point labels, the mesh, source ``procedural`` and shape id
    ``procedural/<Category>/<index:05d>``; meta holds seed, index and the instance's
    parameters.
    """
    name = canonical_name(category, list(_BUILDERS), "procedural category")
    mesh, params = make_mesh(name, index, seed)
    shape_id = f"procedural/{name}/{index:05d}"
    meta = {"seed": int(seed), "index": int(index), "params": params}
    sample_seed = derive_seed(seed, shape_id)
    return shape_from_mesh(shape_id, name, PROCEDURAL_PARTS[name], mesh, num_points, sample_seed, "procedural", meta)
