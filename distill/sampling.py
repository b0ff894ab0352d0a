"""From meshes and raw point sets to normalised, fixed-size ``Shape`` records (docs/design.md §2, §3).

Every shape is centred on its bounding-box centre and scaled so that the farthest point
from that centre lies on the unit sphere. The transform is computed once and applied to
both the mesh vertices and the sampled points, so ``Shape.mesh`` and ``Shape.points``
share one frame (the renderer draws the mesh and projects the points into it).

Sampling is area-weighted over the faces and uniform inside each face; a point takes its
face's label and its face's normal. All randomness comes from a seeded numpy Generator.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from distill.records import Mesh, Shape, ShapeError

# A face whose doubled area is below this fraction of the mesh's squared extent is
# treated as degenerate (zero area in float64 up to rounding): its normal is undefined.
_DEGENERATE_REL_AREA = 1e-14


def derive_seed(seed: int, key: str) -> int:
    """A per-item seed from a run seed and a stable key (e.g. a shape id).

    Independent of iteration order, so a shape samples the same points whichever worker
    reads it. Returns a non-negative int < 2**63.
    """
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, zlib.crc32(key.encode())]).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1]))


def normalize_transform(points: np.ndarray) -> tuple[np.ndarray, float]:
    """The centre and scale that put ``points`` into the unit sphere.

    points: (N, 3) float → (center (3,) float64, scale float > 0); the normalised points are
    ``(points - center) / scale``: centre = bounding-box centre, scale = the largest distance
    from it, so the farthest point lands at norm 1.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0:
        raise ValueError(f"points must be a non-empty (N, 3) array, got shape {pts.shape}")
    if not np.isfinite(pts).all():
        raise ValueError("points contain NaN or inf: clean the input before normalising")
    center = (pts.min(axis=0) + pts.max(axis=0)) / 2.0
    scale = float(np.sqrt(((pts - center) ** 2).sum(axis=1).max()))
    if not scale > 0.0:
        # All points coincide: any scale keeps them at the origin; 1 avoids dividing by 0.
        scale = 1.0
    return center, scale


def apply_transform(points: np.ndarray, center: np.ndarray, scale: float) -> np.ndarray:
    """points: (N, 3) → (N, 3) float32, ``(points - center) / scale``."""
    return ((np.asarray(points, dtype=np.float64) - center) / scale).astype(np.float32)


def face_areas_normals(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Area and unit normal of each triangle.

    vertices: (V, 3) float · faces: (F, 3) int → (areas (F,) float64, normals (F, 3) float64;
    the normal of a zero-area face is 0). Normals follow the right-hand rule of the face's
    vertex order (counter-clockwise seen from outside = outward).
    """
    v = np.asarray(vertices, dtype=np.float64)
    tri = v[np.asarray(faces)]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    norm = np.linalg.norm(cross, axis=1)
    normals = np.divide(cross, norm[:, None], out=np.zeros_like(cross), where=norm[:, None] > 0)
    return 0.5 * norm, normals


def sample_surface(mesh: Mesh, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``n`` points uniformly distributed over the mesh surface.

    mesh: vertices (V, 3), faces (F, 3), face_labels (F,) or None · n: number of points ·
    seed: seeds a numpy Generator → (points (n, 3) float32, normals (n, 3) float32 unit
    face normals, labels (n,) int64 each point's face label, or None when the mesh has no
    face labels). Faces are chosen with probability proportional to their area; the point
    is uniform inside the face (reflected barycentric coordinates).
    """
    if n < 1:
        raise ValueError(f"n={n}: the number of points to sample must be >= 1")
    faces = np.asarray(mesh.faces)
    areas, normals = face_areas_normals(mesh.vertices, faces)
    labels = None if mesh.face_labels is None else np.asarray(mesh.face_labels)
    return _sample_faces(np.asarray(mesh.vertices, np.float64), faces, areas, normals, labels, n, seed)


def _sample_faces(
    vertices: np.ndarray,
    faces: np.ndarray,
    areas: np.ndarray,
    normals: np.ndarray,
    face_labels: np.ndarray | None,
    n: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``sample_surface`` with the per-face areas (any common scale) and normals given."""
    face, points = sample_faces(vertices, faces, areas, n, seed)
    labels = None if face_labels is None else face_labels[face].astype(np.int64)
    return points.astype(np.float32), normals[face].astype(np.float32), labels


def sample_faces(
    vertices: np.ndarray, faces: np.ndarray, areas: np.ndarray, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` area-weighted points on the surface: the area-weighted sampler of the project.

    vertices: (V, 3) float64 · faces: (F, 3) int · areas: (F,) the faces' areas (any common
    scale) · seed: seeds a numpy Generator → (face (n,) int64 the face of each point,
    points (n, 3) float64). A face is chosen with probability proportional to its area;
    the point is uniform inside it (reflected barycentric coordinates).
    """
    if not areas.sum() > 0.0:
        raise ValueError("mesh has zero total area: nothing to sample")
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(areas)
    # searchsorted on the area CDF = area-weighted choice; min() guards the rounding at the top.
    face = np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right"), len(faces) - 1)
    u, w = rng.random(n), rng.random(n)
    flip = u + w > 1.0
    u[flip], w[flip] = 1.0 - u[flip], 1.0 - w[flip]
    tri = vertices[faces[face]]
    return face, tri[:, 0] + u[:, None] * (tri[:, 1] - tri[:, 0]) + w[:, None] * (tri[:, 2] - tri[:, 0])


def _check_part_labels(shape_id: str, labels: np.ndarray, part_names: list[str], what: str) -> None:
    if labels.size and (labels.min() < -1 or labels.max() >= len(part_names)):
        raise ShapeError(
            f"shape {shape_id}: {what} outside [-1, {len(part_names) - 1}] "
            f"(found {labels.min()}..{labels.max()}; part names: {part_names})"
        )


def shape_from_mesh(
    shape_id: str,
    category: str,
    part_names: list[str],
    mesh: Mesh,
    num_points: int,
    seed: int,
    source: str = "unknown",
    meta: dict[str, Any] | None = None,
) -> Shape:
    """A labelled triangle mesh → a normalised ``Shape`` with ``num_points`` surface samples.

    mesh: vertices (V, 3), faces (F, 3) int, face_labels (F,) int (−1 = unlabelled) or None.
    Degenerate (zero-area) faces are dropped and unreferenced vertices removed; the stored
    ``Shape.mesh`` holds the normalised vertices (float32), faces (int32) and face labels.
    ``meta`` gains ``normalize`` = {center, scale} (original frame = points·scale + center).
    Raises ``ShapeError`` (naming the shape) for an empty mesh, NaN/inf vertices, face
    indices out of range, face labels of the wrong length or range, or zero total area.
    """
    if num_points < 1:
        raise ValueError(f"shape {shape_id}: num_points={num_points} must be >= 1")
    vertices = np.asarray(mesh.vertices)
    faces = np.asarray(mesh.faces)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or len(vertices) == 0:
        raise ShapeError(f"shape {shape_id}: mesh has no vertices (vertices shape {vertices.shape})")
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
        raise ShapeError(f"shape {shape_id}: mesh has no triangle faces (faces shape {faces.shape})")
    if not np.issubdtype(faces.dtype, np.integer):
        raise ShapeError(f"shape {shape_id}: face indices must be integers, got {faces.dtype}")
    if not np.isfinite(vertices).all():
        bad = int((~np.isfinite(vertices).all(axis=1)).sum())
        raise ShapeError(f"shape {shape_id}: {bad} vertices have NaN or inf coordinates")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise ShapeError(
            f"shape {shape_id}: face indices {faces.min()}..{faces.max()} out of range for {len(vertices)} vertices"
        )
    face_labels = None
    if mesh.face_labels is not None:
        face_labels = np.asarray(mesh.face_labels).astype(np.int64)
        if face_labels.shape != (len(faces),):
            raise ShapeError(f"shape {shape_id}: {face_labels.shape[0]} face labels for {len(faces)} faces")
        _check_part_labels(shape_id, face_labels, part_names, "face labels")

    vertices = np.asarray(vertices, dtype=np.float64)
    areas, face_normals = face_areas_normals(vertices, faces)
    used = np.zeros(len(vertices), bool)
    used[faces] = True
    extent = float(np.ptp(vertices[used], axis=0).max())
    keep = (areas > _DEGENERATE_REL_AREA * extent**2) & (faces[:, 0] != faces[:, 1])
    keep &= (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    if not keep.any():
        raise ShapeError(f"shape {shape_id}: mesh has zero surface area (all {len(faces)} faces are degenerate)")
    faces, areas, face_normals = faces[keep], areas[keep], face_normals[keep]
    if face_labels is not None:
        face_labels = face_labels[keep]
    # Compact the vertices to those the kept faces use, so the normalisation (and the
    # stored mesh) is about the surface and not about stray unreferenced vertices.
    used[:] = False
    used[faces] = True
    remap = np.cumsum(used) - 1
    faces = remap[faces].astype(np.int32)
    center, scale = normalize_transform(vertices[used])
    norm_vertices = (vertices[used] - center) / scale

    out_mesh = Mesh(
        norm_vertices.astype(np.float32), faces, None if face_labels is None else face_labels.astype(np.int32)
    )
    # Areas scale uniformly and normals not at all under the normalisation: reuse them.
    points, normals, labels = _sample_faces(norm_vertices, faces, areas, face_normals, face_labels, num_points, seed)
    meta = dict(meta or {})
    meta["normalize"] = {"center": [float(c) for c in center], "scale": scale}
    return Shape(
        shape_id=shape_id,
        category=category,
        part_names=list(part_names),
        points=points,
        normals=normals,
        labels=labels,
        source=source,
        mesh=out_mesh,
        meta=meta,
    )


def shape_from_points(
    shape_id: str,
    category: str,
    part_names: list[str],
    points: np.ndarray,
    normals: np.ndarray | None,
    labels: np.ndarray | None,
    num_points: int,
    seed: int,
    source: str = "unknown",
    meta: dict[str, Any] | None = None,
) -> Shape:
    """A raw point set → a normalised ``Shape`` of exactly ``num_points`` points.

    points: (M, 3) float · normals: (M, 3) float or None (rescaled to unit length where
    non-zero) · labels: (M,) int or None (−1 = unlabelled). The normalisation is computed
    on all M points, then ``num_points`` are drawn: without replacement when M is enough,
    else all M points plus random repeats (the draw is reproducible from ``seed``). ``meta``
    gains ``normalize``. Raises ``ShapeError`` (naming the shape) for empty input, NaN/inf
    coordinates, mismatched lengths or labels out of range.
    """
    if num_points < 1:
        raise ValueError(f"shape {shape_id}: num_points={num_points} must be >= 1")
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ShapeError(f"shape {shape_id}: points must be (M, 3), got {pts.shape}")
    m = len(pts)
    if m == 0:
        raise ShapeError(f"shape {shape_id}: no points")
    if not np.isfinite(pts).all():
        bad = int((~np.isfinite(pts).all(axis=1)).sum())
        raise ShapeError(f"shape {shape_id}: {bad} of {m} points have NaN or inf coordinates")
    if normals is not None:
        normals = np.asarray(normals, dtype=np.float64)
        if normals.shape != (m, 3):
            raise ShapeError(f"shape {shape_id}: normals {normals.shape} do not match points ({m}, 3)")
        if not np.isfinite(normals).all():
            raise ShapeError(f"shape {shape_id}: normals contain NaN or inf")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (m,):
            raise ShapeError(f"shape {shape_id}: labels {labels.shape} do not match {m} points")
        labels = labels.astype(np.int64)
        _check_part_labels(shape_id, labels, part_names, "labels")

    center, scale = normalize_transform(pts)
    rng = np.random.default_rng(seed)
    if m >= num_points:
        idx = rng.choice(m, num_points, replace=False)
    else:
        # Too few points: keep every one, then repeat random ones to reach the size.
        idx = np.concatenate([rng.permutation(m), rng.integers(0, m, num_points - m)])
    out_normals = None
    if normals is not None:
        nrm = normals[idx]
        length = np.linalg.norm(nrm, axis=1, keepdims=True)
        out_normals = np.divide(nrm, length, out=np.zeros_like(nrm), where=length > 0).astype(np.float32)
    meta = dict(meta or {})
    meta["normalize"] = {"center": [float(c) for c in center], "scale": scale}
    return Shape(
        shape_id=shape_id,
        category=category,
        part_names=list(part_names),
        points=apply_transform(pts[idx], center, scale),
        normals=out_normals,
        labels=None if labels is None else labels[idx],
        source=source,
        meta=meta,
    )
