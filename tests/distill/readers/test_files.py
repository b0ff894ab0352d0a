"""The files reader (distill/readers/files.py): any mesh or point cloud trimesh reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trimesh

from distill.categories import SHAPENETPART_PARTS
from distill.config import DataConfig
from distill.readers import iter_items
from distill.records import ShapeError


def _write_box(path: Path) -> None:
    trimesh.creation.box(extents=(1, 2, 3)).export(path)


def test_files_source_reads_meshes_point_clouds_and_scenes(tmp_path):
    (tmp_path / "chair").mkdir()
    (tmp_path / "misc").mkdir()
    _write_box(tmp_path / "chair" / "a.obj")
    cloud = np.random.default_rng(0).normal(size=(500, 3))
    trimesh.PointCloud(cloud).export(tmp_path / "chair" / "b.ply")
    _write_box(tmp_path / "misc" / "c.stl")
    scene = trimesh.Scene()
    scene.add_geometry(trimesh.creation.box(extents=(1, 1, 1)))
    scene.add_geometry(trimesh.creation.icosphere(1), transform=trimesh.transformations.translation_matrix([3, 0, 0]))
    scene.export(tmp_path / "misc" / "d.glb")

    items = list(iter_items(DataConfig(source="files", path=str(tmp_path), num_points=256), seed=0))
    assert [i.shape_id for i in items] == ["files/chair/a", "files/chair/b", "files/misc/c", "files/misc/d"]
    assert [i.category for i in items] == ["chair", "chair", "misc", "misc"]
    a, b = items[0].load(), items[1].load()
    assert a.part_names == SHAPENETPART_PARTS["Chair"] and a.labels is None and len(a.mesh.faces) == 12
    assert a.points.shape == (256, 3) and np.isclose(np.abs(a.mesh.vertices).max(), 3 / np.sqrt(14), atol=1e-5)
    assert b.mesh is None and b.points.shape == (256, 3) and b.labels is None
    # "misc" is no known category: its files are rejected one by one, with the reason.
    with pytest.raises(ValueError, match="unknown category 'misc'"):
        items[2].load()
    # With a category and part names given, every file reads; the glb scene is one mesh.
    data = DataConfig(source="files", path=str(tmp_path), category="Thing", part_names=["x", "y"], num_points=128)
    shapes = {i.shape_id: i.load() for i in iter_items(data, seed=0)}
    assert all(s.category == "Thing" and s.part_names == ["x", "y"] for s in shapes.values())
    d = shapes["files/misc/d"]
    assert len(d.mesh.faces) == 12 + 80 and d.points[:, 0].max() - d.points[:, 0].min() > 1.5
    # A single file as data.path.
    one = list(iter_items(DataConfig(source="files", path=str(tmp_path / "misc" / "c.stl"), category="Chair"), 0))
    assert [i.shape_id for i in one] == ["files/c"] and one[0].load().num_points == 2048


def test_files_source_keeps_ids_unique_and_reports_bad_files(tmp_path):
    _write_box(tmp_path / "a.obj")
    _write_box(tmp_path / "a.stl")
    (tmp_path / "empty.obj").write_bytes(b"")
    (tmp_path / "junk.ply").write_bytes(b"not a ply at all")
    data = DataConfig(source="files", path=str(tmp_path), category="Chair")
    items = {i.shape_id: i for i in iter_items(data, seed=0)}
    assert set(items) == {"files/a_obj", "files/a_stl", "files/empty", "files/junk"}
    with pytest.raises(ShapeError, match="empty.obj: empty file"):
        items["files/empty"].load()
    with pytest.raises(ShapeError, match="junk.ply"):
        items["files/junk"].load()
    assert items["files/a_stl"].load().num_points == 2048
    with pytest.raises(FileNotFoundError, match="neither a file nor a folder"):
        iter_items(DataConfig(source="files", path=str(tmp_path / "nope")), seed=0)
