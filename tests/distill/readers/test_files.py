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


def _ids_as_listed_before(root: Path, data: DataConfig) -> list[tuple[str, str, str]]:
    """The listing as the reader built it before it kept one string a file (``Path``
    objects and id tuples of the whole tree): the order and ids it must keep."""
    import collections
    import re

    from distill.readers.common import cap, select_categories, split_ids
    from distill.readers.files import MESH_EXTENSIONS

    safe = re.compile(r"[^A-Za-z0-9._/\-]")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in MESH_EXTENSIONS)
    keys = [safe.sub("_", p.relative_to(root).with_suffix("").as_posix()) for p in files]
    counts = collections.Counter(keys)
    by_category: dict[str, list[tuple[str, Path]]] = {}
    for key, p in zip(keys, files):
        if counts[key] > 1:
            key = f"{key}_{p.suffix.lstrip('.').lower()}"
        category = data.category or (p.parent.name if p.parent != root else root.resolve().name)
        by_category.setdefault(category, []).append((f"files/{key}", p))
    out = []
    for category in select_categories(list(by_category), data.categories, "files"):
        entries = sorted(by_category[category], key=lambda e: e[0])
        selected = set(cap(split_ids([e[0] for e in entries], data.split), data.per_category))
        out += [(i, category, str(p)) for i, p in entries if i in selected]
    return out


@pytest.mark.parametrize(
    "overrides",
    [{}, {"split": "train"}, {"split": "test", "per_category": 3}, {"category": "Chair"}, {"categories": ["chair"]}],
)
def test_files_listing_keeps_the_ids_and_order_of_a_full_sort(tmp_path, overrides):
    """One string a file instead of the whole tree's ``Path`` objects: the same items in the
    same order, over nested folders of one category name, unsafe characters, upper-case
    and shared-stem extensions, files beside folders, and other files."""
    root = tmp_path / "shapes"
    names = [
        "chair/b.obj", "chair/a.PLY", "chair/a.obj", "chair/10.off", "chair/9.off", "chair/x y.stl",
        "chair/chair/c.obj", "chair/chair/a.glb", "chair/d-e.obj", "chair/d.e.obj", "chair/notes.txt",
        "lamp/q.obj", "lamp/deep/lamp/r.obj", "lamp/deep/s.gltf", "top.obj", "top.off", "other/readme.md",
    ]  # fmt: skip
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    data = DataConfig(source="files", path=str(root), **overrides)
    listed = [(i.shape_id, i.category, i.path) for i in iter_items(data, seed=0)]
    assert listed == _ids_as_listed_before(root, data)
    assert len(listed) == len({i for i, _, _ in listed})
