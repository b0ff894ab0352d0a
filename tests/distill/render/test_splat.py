"""Point splatting against its slow reference."""

from __future__ import annotations

import numpy as np

from distill.cameras import PARTSLIP_VIEWS, cameras_from_angles
from distill.render.splat import splat_points, splat_points_reference


def test_splat_matches_reference():
    rng = np.random.default_rng(3)
    pts = rng.uniform(-0.6, 0.6, (150, 3)).astype(np.float32)
    cams = cameras_from_angles(np.array(PARTSLIP_VIEWS[:3]), 2.2, 24, 50)
    depth, pid = splat_points(pts, cams, 0.05)
    depth_ref, pid_ref = splat_points_reference(pts, cams, 0.05)
    assert (pid >= 0).mean() > 0.2
    np.testing.assert_array_equal(pid >= 0, pid_ref >= 0)
    np.testing.assert_allclose(depth[pid >= 0], depth_ref[pid >= 0], atol=1e-5)
    assert (pid == pid_ref).mean() > 0.999
