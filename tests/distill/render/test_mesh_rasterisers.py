"""Mesh rasterisers (Embree ray casting, torch z-buffer) against the slow reference ray cast."""

from __future__ import annotations

import numpy as np
import pytest

from distill.cameras import PARTSLIP_VIEWS, cameras_from_angles, make_cameras
from distill.config import RenderConfig
from distill.render.raycast import embree_available, raycast_mesh_embree, raycast_mesh_reference
from distill.render.zbuffer import rasterize_mesh_torch
from tests.distill.render.shapes import random_mesh

needs_embree = pytest.mark.skipif(not embree_available(), reason="embreex is not installed")


def _rasterisers():
    out = [("torch", rasterize_mesh_torch)]
    if embree_available():
        out.append(("embree", raycast_mesh_embree))
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_mesh_rasterisers_match_reference_raycast(seed):
    m = random_mesh(seed)
    v, f = m.vertices.astype(np.float32), m.faces
    cams = cameras_from_angles(np.array(PARTSLIP_VIEWS[::3]), 2.2, 24, 50)
    depth_ref, face_ref = raycast_mesh_reference(v, f, cams)
    assert (face_ref >= 0).mean() > 0.1  # the shape is on screen
    for name, raster in _rasterisers():
        depth, face = raster(v, f, cams)
        same = face == face_ref
        assert same.mean() >= 0.995, name
        np.testing.assert_allclose(depth[same & (face >= 0)], depth_ref[same & (face >= 0)], atol=1e-5, err_msg=name)
        assert np.isinf(depth[face < 0]).all()


@needs_embree
def test_embree_and_torch_rasterisers_agree():
    m = random_mesh(2)
    v, f = m.vertices.astype(np.float32), m.faces
    cams = make_cameras(RenderConfig(image_size=96))
    d_e, f_e = raycast_mesh_embree(v, f, cams)
    d_t, f_t = rasterize_mesh_torch(v, f, cams)
    assert (f_e == f_t).mean() > 0.999
    both = (f_e == f_t) & (f_e >= 0)
    np.testing.assert_allclose(d_e[both], d_t[both], atol=1e-4)
