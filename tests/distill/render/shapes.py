"""Small meshes and shapes the renderer's tests draw."""

from __future__ import annotations

import numpy as np
import trimesh

from distill.records import Mesh, Shape


def random_mesh(seed: int) -> trimesh.Trimesh:
    """Three overlapping random boxes / spheres inside the unit sphere: occlusion, grazing
    faces, silhouettes and interpenetration, in a few hundred faces."""
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(3):
        if rng.random() < 0.5:
            m = trimesh.creation.box(extents=rng.uniform(0.2, 0.8, 3))
        else:
            m = trimesh.creation.icosphere(subdivisions=1, radius=rng.uniform(0.15, 0.4))
        m.apply_translation(rng.uniform(-0.35, 0.35, 3))
        parts.append(m)
    return trimesh.util.concatenate(parts)


def two_box_shape(with_mesh: bool = True, num_points: int = 600) -> Shape:
    """A 'table': a flat top (part 0) on a thick post (part 1), with surface samples."""
    top = trimesh.creation.box(extents=[1.2, 0.15, 0.8])
    # Well below the 10°-elevation cameras' height (0.38): its top is not seen edge-on.
    top.apply_translation([0, 0.1, 0])
    post = trimesh.creation.box(extents=[0.25, 0.6, 0.25])
    post.apply_translation([0, -0.27, 0])
    mesh = trimesh.util.concatenate([top, post])
    face_labels = np.r_[np.zeros(len(top.faces)), np.ones(len(post.faces))].astype(np.int32)
    pts, fi = trimesh.sample.sample_surface(mesh, num_points, seed=0)
    return Shape(
        "two_box",
        "Table",
        ["top", "post"],
        pts.astype(np.float32),
        normals=mesh.face_normals[fi].astype(np.float32),
        labels=face_labels[fi],
        mesh=Mesh(mesh.vertices.astype(np.float32), mesh.faces.astype(np.int32), face_labels) if with_mesh else None,
    )
