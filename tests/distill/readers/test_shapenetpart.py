"""The ShapeNetPart reader (distill/readers/shapenetpart.py)."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from distill.categories import SHAPENETPART_PARTS, SHAPENETPART_PID_START
from distill.config import DataConfig
from distill.readers import iter_items
from tests.conftest import shared_data


def test_shapenetpart_sample():
    root = shared_data("shapenetpart")
    items = list(iter_items(DataConfig(source="shapenetpart", path=str(root)), seed=0))
    assert [i.category for i in items] == ["Skateboard", "Skateboard", "Table", "Table"]
    assert items[0].shape_id == "shapenetpart/04225987/1ad8d7573dc57ebc247a956ed3779e34"
    sizes = {
        split: len(list(iter_items(DataConfig(source="shapenetpart", path=str(root), split=split), 0)))
        for split in ("train", "val", "test")
    }
    assert sizes == {"train": 3, "val": 0, "test": 1}
    # Asking for a real category with no files here yields nothing, not an error.
    assert list(iter_items(DataConfig(source="shapenetpart", path=str(root), categories=["lamp"]), 0)) == []
    for item in items:
        shape = item.load()
        assert shape.points.shape == (2048, 3) and shape.normals.shape == (2048, 3)
        assert shape.part_names == SHAPENETPART_PARTS[item.category]
        raw = np.loadtxt(item.path)
        # Map each chosen point back to its file row through the stored normalisation.
        n = shape.meta["normalize"]
        back = shape.points.astype(np.float64) * n["scale"] + np.array(n["center"])
        dist, row = cKDTree(raw[:, :3]).query(back)
        assert dist.max() < 1e-5
        expected = raw[row, 6].astype(np.int64) - SHAPENETPART_PID_START[item.category]
        assert np.array_equal(shape.labels, expected)
        assert np.isclose(np.linalg.norm(shape.points, axis=1).max(), 1.0, atol=0.05)
