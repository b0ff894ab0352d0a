"""Closed triangle primitives and the labelled-mesh builder of the procedural corpus.

Each primitive returns (vertices (V, 3) float64, faces (F, 3) int64), closed and
consistently wound; ``MeshBuilder.add`` turns every one outward.
"""

from __future__ import annotations

import numpy as np

from distill.records import Mesh

SECTIONS = 20  # segments around a surface of revolution: smooth enough at 800², few faces.


# --------------------------------------------------------------------------------------
# Primitives: each returns (vertices (V, 3) float64, faces (F, 3) int64), closed and
# consistently wound; ``MeshBuilder.add`` turns every one outward.


def rot_matrix(axis: str, deg: float) -> np.ndarray:
    """3×3 rotation by ``deg`` degrees about the x, y or z axis (right-hand rule)."""
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return {
        "x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
        "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
        "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]),
    }[axis]


def loft_mesh(rings: list[np.ndarray], cap_start: bool = True, cap_end: bool = True) -> tuple[np.ndarray, np.ndarray]:
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


def circle_ring(radius: float, sections: int = SECTIONS) -> np.ndarray:
    """(sections, 2) points of a circle, counter-clockwise."""
    t = np.linspace(0.0, 2.0 * np.pi, sections, endpoint=False)
    return radius * np.stack([np.cos(t), np.sin(t)], 1)


def revolve_profile(profile: list[tuple[float, float]], sections: int = SECTIONS) -> tuple[np.ndarray, np.ndarray]:
    """Surface of revolution about +y. profile: (radius, y) pairs; radius 0 = a pole."""
    rings = []
    for r, y in profile:
        if r <= 1e-9:  # a pole (also catches cos(pi/2) rounding)
            rings.append(np.array([[0.0, y, 0.0]]))
        else:
            c = circle_ring(r, sections)
            rings.append(np.stack([c[:, 0], np.full(sections, y), c[:, 1]], 1))
    return loft_mesh(rings)


def cylinder_mesh(r_bottom: float, r_top: float, height: float, sections: int = SECTIONS) -> tuple:
    """Frustum (cylinder when radii agree, cone when r_top = 0) along +y from y=0 to y=height."""
    return revolve_profile([(0.0, 0.0), (r_bottom, 0.0), (r_top, height), (0.0, height)], sections)


def ellipsoid_mesh(rx: float, ry: float, rz: float, rings: int = 8, sections: int = SECTIONS) -> tuple:
    """Ellipsoid centred at the origin with semi-axes (rx, ry, rz)."""
    t = np.linspace(0.0, np.pi, rings + 1)
    v, f = revolve_profile([(float(np.sin(a)), float(-np.cos(a))) for a in t], sections)
    return v * [rx, ry, rz], f


def box_mesh(size: tuple[float, float, float]) -> tuple:
    """Axis-aligned box of ``size`` centred at the origin."""
    sx, sy, sz = (s / 2.0 for s in size)
    rect = np.array([[sx, sz], [-sx, sz], [-sx, -sz], [sx, -sz]])
    return loft_mesh([np.stack([rect[:, 0], np.full(4, y), rect[:, 1]], 1) for y in (-sy, sy)])


def prism_mesh(polygon: np.ndarray, thickness: float) -> tuple:
    """A convex polygon in the xz plane, (k, 2) as (x, z), extruded along y, centred on y=0."""
    p = np.asarray(polygon, np.float64)
    k = len(p)
    return loft_mesh([np.stack([p[:, 0], np.full(k, y), p[:, 1]], 1) for y in (-thickness / 2, thickness / 2)])


def tube_mesh(path: np.ndarray, profile: np.ndarray) -> tuple:
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
    return loft_mesh(rings)


def placed(prim: tuple, rot: np.ndarray | None = None, at: tuple[float, float, float] = (0, 0, 0)) -> tuple:
    v, f = prim
    if rot is not None:
        v = v @ np.asarray(rot).T
    return v + np.asarray(at, np.float64), f


def mirror_x(prim: tuple) -> tuple:
    v, f = prim
    return v * [-1.0, 1.0, 1.0], f


class MeshBuilder:
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


def frame_of(direction: np.ndarray) -> np.ndarray:
    """3×3 rotation taking +y onto the unit vector along ``direction`` (3,)."""
    d = np.asarray(direction, np.float64)
    d = d / np.linalg.norm(d)
    y = np.array([0.0, 1.0, 0.0])
    v, c = np.cross(y, d), float(y @ d)
    if np.linalg.norm(v) < 1e-9:  # parallel or antiparallel to +y
        return np.eye(3) if c > 0 else rot_matrix("x", 180)
    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + k + k @ k * (1.0 / (1.0 + c))


def segment_mesh(a: np.ndarray, b: np.ndarray, r_a: float, r_b: float, sections: int = 12) -> tuple:
    """A frustum from point ``a`` (radius ``r_a``) to point ``b`` (radius ``r_b``), both (3,)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return placed(cylinder_mesh(r_a, r_b, float(np.linalg.norm(b - a)), sections), frame_of(b - a), at=tuple(a))
