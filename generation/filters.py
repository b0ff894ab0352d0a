"""Quality filters for generated meshes: is this a usable object of its category?

``check_mesh(mesh, category)`` returns ``None`` for a usable mesh, else the reason, as
``"<kind>: <details>"`` with kind one of ``empty``, ``invalid``, ``degenerate``, ``flat``,
``fragmented``, ``extent`` (stages count rejects by kind). Checks, cheapest first:

empty / invalid
    no faces, or NaN/inf vertices, or face indices out of range.
degenerate
    total surface area below ``min_rel_area`` of the squared largest extent (a mesh of
    slivers or points).
flat
    the smallest principal extent (along the area-weighted principal axes, so a tilted
    sheet counts) below ``min_thickness`` (2 %) of the largest: a single sheet, no volume.
fragmented
    pieces are found by *proximity*, not by shared vertices: surface samples and vertices
    go into a voxel grid (``voxels`` = 48 cells along the largest extent, dilated by one cell)
    whose 26-connected components are the pieces, and each face's area counts for the
    piece of its first vertex. Part-assembled meshes (procedural shapes, CAD models) are
    separate closed primitives that touch, so shared-vertex components would call every
    chair "fragmented"; floaters and scattered debris (what a text-to-3D model gets wrong)
    stay apart. Rejected when the largest piece holds < ``min_main_share`` (60 %) of the
    area or more than ``max_pieces`` pieces hold ≥ ``piece_share`` each.
extent
    for a known category, the ratios of the principal extents (middle / largest, smallest
    / largest) must lie in generous per-category bounds (``ASPECT_BOUNDS``): a needle is no
    chair, a ball is no rocket. Bounds were set at about half the smallest ratio seen in
    the procedural corpus (30 instances per category) and in typical ShapeNet objects.

Pure numpy/scipy on ``trimesh.Trimesh``; no model, no IO. Deterministic (sampling is
seeded; ``distill.sampling.sample_faces``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import trimesh
from scipy import ndimage

from distill.sampling import face_areas_normals, sample_faces

if TYPE_CHECKING:
    from distill.records import Shape


@dataclass(frozen=True)
class AspectBounds:
    """Allowed principal-extent ratios of a category (orientation-free)."""

    middle: tuple[float, float]
    """(min, max) of middle / largest extent."""
    smallest_min: float
    """Minimum of smallest / largest extent."""


ASPECT_BOUNDS: dict[str, AspectBounds] = {
    # Procedural corpus (30 instances each) measured middle / smallest ratios:
    # Airplane .62-.97/.18-.31, Car .37-.52/.27-.39, Chair .48-.85/.37-.68, Guitar .25-.42/.04-.14,
    # Lamp .30-.96/.30-.88, Rocket .23-.57/.23-.57, Skateboard .25-.41/.14-.24, Table .43-1/.33-.98.
    "airplane": AspectBounds((0.25, 1.0), 0.03),
    "bag": AspectBounds((0.2, 1.0), 0.05),
    "cap": AspectBounds((0.3, 1.0), 0.12),
    "car": AspectBounds((0.2, 1.0), 0.12),
    "chair": AspectBounds((0.25, 1.0), 0.15),
    "earphone": AspectBounds((0.15, 1.0), 0.04),
    "guitar": AspectBounds((0.1, 0.75), 0.02),
    "knife": AspectBounds((0.02, 0.5), 0.005),
    "lamp": AspectBounds((0.08, 1.0), 0.05),
    "laptop": AspectBounds((0.35, 1.0), 0.02),
    "motorbike": AspectBounds((0.15, 1.0), 0.1),
    "mug": AspectBounds((0.4, 1.0), 0.25),
    "cup": AspectBounds((0.4, 1.0), 0.25),
    "pistol": AspectBounds((0.25, 1.0), 0.04),
    "rocket": AspectBounds((0.04, 0.9), 0.03),
    "skateboard": AspectBounds((0.1, 0.7), 0.03),
    "table": AspectBounds((0.15, 1.0), 0.08),
}
"""Per category (case-insensitive): generous principal-extent bounds. Unknown categories
get the generic checks only."""


@dataclass(frozen=True)
class MeshChecks:
    """Thresholds of ``check_mesh`` (defaults are the stage's)."""

    min_rel_area: float = 1e-4
    """Surface area / largest extent² below this: degenerate."""
    min_thickness: float = 0.02
    """Smallest / largest principal extent below this: flat (a category's own lower bound
    wins when smaller, e.g. knives)."""
    min_main_share: float = 0.6
    """The largest piece must hold at least this share of the surface area."""
    max_pieces: int = 8
    """At most this many significant pieces."""
    piece_share: float = 0.02
    """A piece is significant from this share of the area."""
    voxels: int = 48
    """Proximity grid cells along the largest extent (pieces closer than ~2 cells merge)."""
    samples_per_cell: float = 2.0
    """Surface samples per cell-area of surface when filling the proximity grid."""
    max_samples: int = 400_000
    check_extent: bool = True
    seed: int = 0


DEFAULT_CHECKS = MeshChecks()


def _arrays(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)


def principal_extents(vertices: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """Extents along the principal axes of the surface, largest first.

    vertices: (V, 3) the mesh's used vertices · samples: (S, 3) area-weighted surface
    points (define the axes) → (3,) float64, the vertices' ranges along the axes.
    """
    centred = samples - samples.mean(axis=0)
    _, axes = np.linalg.eigh(centred.T @ centred)
    return np.sort(np.ptp(vertices @ axes, axis=0))[::-1]


def piece_shares(
    vertices: np.ndarray, faces: np.ndarray, areas: np.ndarray, samples: np.ndarray, voxels: int
) -> np.ndarray:
    """Area share of each proximity piece (see the module docstring), largest first.

    vertices (V, 3) · faces (F, 3) · areas (F,) · samples (S, 3) surface points · voxels:
    cells along the largest extent → (P,) float64 summing to 1.
    """
    lo = vertices.min(axis=0)
    cell = max(float(np.ptp(vertices, axis=0).max()) / voxels, 1e-12)
    pts = np.concatenate([vertices, samples])
    idx = np.floor((pts - lo) / cell).astype(np.int64) + 1  # +1: room for the dilation
    grid = np.zeros(tuple(idx.max(axis=0) + 2), dtype=bool)
    grid[idx[:, 0], idx[:, 1], idx[:, 2]] = True
    full = np.ones((3, 3, 3), dtype=bool)
    # Dilate once so sampling gaps inside one surface never split it.
    labels, count = ndimage.label(ndimage.binary_dilation(grid, structure=full), structure=full)
    v_idx = idx[: len(vertices)]
    face_label = labels[v_idx[faces[:, 0], 0], v_idx[faces[:, 0], 1], v_idx[faces[:, 0], 2]]
    shares = np.bincount(face_label, weights=areas, minlength=count + 1)[1:] / areas.sum()
    return np.sort(shares[shares > 0])[::-1]


def aspect_bounds(category: str) -> AspectBounds | None:
    """The bounds of ``category`` (case-insensitive), or None when it has none."""
    return ASPECT_BOUNDS.get(category.casefold())


def check_mesh(mesh: trimesh.Trimesh, category: str, checks: MeshChecks = DEFAULT_CHECKS) -> str | None:
    """None when ``mesh`` is a usable object of ``category``, else the reason (``"kind: ..."``).

    mesh: any triangle mesh (vertices (V, 3), faces (F, 3)), in any frame and scale; only
    the faces' vertices count. See the module docstring for the checks.
    """
    vertices, faces = _arrays(mesh)
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0 or len(vertices) == 0:
        return f"empty: no faces ({len(vertices)} vertices, {len(faces)} faces)"
    if faces.min() < 0 or faces.max() >= len(vertices):
        return f"invalid: face indices {faces.min()}..{faces.max()} out of range for {len(vertices)} vertices"
    used = np.unique(faces)
    vertices_used = vertices[used]
    if not np.isfinite(vertices_used).all():
        return "invalid: NaN or inf vertex coordinates"
    largest = float(np.ptp(vertices_used, axis=0).max())
    areas, _ = face_areas_normals(vertices, faces)
    total = float(areas.sum())
    if largest <= 0.0 or total < checks.min_rel_area * largest**2:
        return (
            f"degenerate: surface area {total:.3g} is below {checks.min_rel_area:g} × largest extent² ({largest:.3g}²)"
        )

    cell_area = (largest / checks.voxels) ** 2
    n = int(np.clip(checks.samples_per_cell * total / cell_area, 1000, checks.max_samples))
    _, samples = sample_faces(vertices, faces, areas, n, checks.seed)
    extents = principal_extents(vertices_used, samples)
    bounds = aspect_bounds(category) if checks.check_extent else None
    thin = min(checks.min_thickness, bounds.smallest_min) if bounds else checks.min_thickness
    smallest = extents[2] / extents[0]
    if smallest < thin:
        return f"flat: thinnest principal extent is {smallest:.2%} of the largest (< {thin:.0%}): a sheet, no volume"

    shares = piece_shares(vertices, faces, areas, samples, checks.voxels)
    significant = int((shares >= checks.piece_share).sum())
    if shares[0] < checks.min_main_share:
        return (
            f"fragmented: the largest of {len(shares)} pieces holds {shares[0]:.0%} of the area "
            f"(< {checks.min_main_share:.0%})"
        )
    if significant > checks.max_pieces:
        return (
            f"fragmented: {significant} pieces hold ≥ {checks.piece_share:.0%} of the area each (> {checks.max_pieces})"
        )

    if bounds is not None:
        middle = extents[1] / extents[0]
        lo, hi = bounds.middle
        if not lo <= middle <= hi:
            return (
                f"extent: middle/largest principal extent {middle:.2f} outside [{lo:g}, {hi:g}] "
                f"expected of a {category}"
            )
        if smallest < bounds.smallest_min:
            return (
                f"extent: smallest/largest principal extent {smallest:.3f} below {bounds.smallest_min:g} "
                f"expected of a {category}"
            )
    return None


def check_shape(shape: Shape, checks: MeshChecks = DEFAULT_CHECKS) -> str | None:
    """``check_mesh`` on a generated shape's mesh and category (``ValueError`` when it has no mesh)."""
    if shape.mesh is None:
        raise ValueError(f"{shape.shape_id}: no mesh to check")
    return check_mesh(trimesh.Trimesh(shape.mesh.vertices, shape.mesh.faces, process=False), shape.category, checks)


def reason_kind(reason: str) -> str:
    """``"fragmented: ..."`` → ``"fragmented"`` (for counting rejects by kind)."""
    return reason.split(":", 1)[0].strip() or "unknown"
