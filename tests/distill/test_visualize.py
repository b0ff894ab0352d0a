import io

import numpy as np
import trimesh
from PIL import Image

from distill.visualize import colored_ply, part_colors, png_bytes, segmentation_figure


def _cloud(n=400, seed=0):
    rng = np.random.default_rng(seed)
    pts = rng.uniform(-0.5, 0.5, (n, 3)).astype(np.float32)
    labels = (pts[:, 1] > 0).astype(np.int64)
    return pts, labels


def test_figure_has_views_legend_and_truth_row():
    pts, labels = _cloud()
    fig = segmentation_figure(pts, labels, ["top", "bottom"], truth=labels, title="t", size=120)
    assert fig.size == (3 * 120 + 190, 28 + 2 * 120)
    img = np.asarray(Image.open(io.BytesIO(png_bytes(fig))))
    # both part colours appear in the views
    for c in part_colors(np.array([0, 1])):
        assert np.any(np.all(np.abs(img[28:, :360].astype(int) - c) < 40, axis=-1))


def test_unlabelled_points_are_grey():
    assert tuple(part_colors(np.array([-1]))[0]) == (170, 170, 170)


def test_colored_ply_opens_in_trimesh():
    pts, labels = _cloud(50)
    cloud = trimesh.load(io.BytesIO(colored_ply(pts, labels)), file_type="ply")
    np.testing.assert_allclose(cloud.vertices, pts, atol=1e-6)
    np.testing.assert_array_equal(cloud.colors[:, :3], part_colors(labels))
